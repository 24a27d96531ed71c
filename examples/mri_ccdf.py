"""4x Cartesian MRI with CCDF: the std map calibrated on held-out k-space (no ground truth), then,
for users who have ground truth, on a second slice.

Run: ``python examples/mri_ccdf.py``.
"""

import numpy as np
import torch

import recon
from operators import CartesianMRI
from recon.priors.data import held_out_images
from recon.uncertainty import apply_calibration, calibrate, calibration

slices = held_out_images("mri", 128)
physics = CartesianMRI(image_size=128, acceleration=4, center_fraction=0.08, seed=0)


def run(truth):
    y = physics.A(torch.from_numpy(truth)[None, None])  # k-space as (1, 2, H, W): real, imaginary
    return recon.reconstruct(y, physics, method="ccdf", prior="mri", n_samples=8, steps=20)


# By default the std is scaled on held-out k-space columns: no ground truth needed.
result = run(slices[0])
zero_filled = 10 * np.log10(1 / np.mean((result.initial[0] - slices[0]) ** 2))
ccdf = 10 * np.log10(1 / np.mean((result.mean[0] - slices[0]) ** 2))
held_out = result.metadata["self_validation"]
print(f"zero-filled {zero_filled:.2f} dB -> CCDF {ccdf:.2f} dB; held-out relative misfit "
      f"{held_out['heldout_relative_rms']:.4f}; std scale from held-out data {result.metadata['std_scale']:.2f}")
print("held-out calibration:", calibration(result, slices[0][None]))

# With ground truth on another slice, a further scale can be fitted there and applied.
scale = calibrate([run(slices[-1])], [slices[-1][None]])
print(f"ground-truth scale on top {scale:.2f}:", calibration(apply_calibration(result, scale), slices[0][None]))
