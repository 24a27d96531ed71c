"""A volume's slices with one self-validation: 4x MRI of 8 real T1 slices (Colin27), steered once for all.

The middle slice self-validates for the volume: steering trains one set of adapters on its first
reconstruction and on those of the other training slices, the held-out k-space decides whether to
keep them, and every slice samples with that choice and the volume's std scale. Steering pays where
the prior does not know the anatomy: here the `natural` prior (photographs) on a T1 head. Over 16
slices or more ccdf steers by default; this volume is shorter, so `adapt="auto"` asks for it.
About 3 minutes on one CPU core.

Run: ``python examples/volume_ccdf.py`` (the real T1 comes with ``scripts/setup_scans.sh``).
"""

import numpy as np
import torch

import recon
from operators import CartesianMRI
from recon.priors.data import real_images

truth = real_images("mri-head", 128)  # (8, 128, 128) in [0, 1], never seen in training
physics = CartesianMRI(image_size=128, acceleration=4, center_fraction=0.08, seed=0)
kspace = [physics.A(torch.from_numpy(image)[None, None]) for image in truth]

results = recon.reconstruct_volume(kspace, physics, prior="natural", adapt="auto",
                                   callback=lambda i, step, total, _: print(f"\rslice {i}: {step}/{total}", end=""))
print()
reference = results[0].metadata["volume"]["reference"]
gate = results[reference].metadata["self_validation"]["steering"]
print(f"adapters kept: {gate['kept']}; held-out misfit steered {gate['heldout_misfit_steered']:.4f}, "
      f"unsteered {gate['heldout_misfit_unsteered']:.4f}")
for i, (result, image) in enumerate(zip(results, truth)):
    zero_filled = 10 * np.log10(1 / np.mean((result.initial[0] - image) ** 2))
    ccdf = 10 * np.log10(1 / np.mean((result.mean[0] - image) ** 2))
    coverage = np.mean(np.abs(result.mean[0] - image) <= 2 * result.std[0])
    print(f"slice {i}: zero-filled {zero_filled:.2f} dB -> ccdf {ccdf:.2f} dB, 2-std coverage {coverage:.1%}")
