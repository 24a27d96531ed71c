"""Sparse-view CT with CCDF: 30 views, 8 posterior samples, mean and uncertainty map.

Run: ``python examples/ct_ccdf.py`` (about a minute on a laptop CPU; seconds on a GPU).
"""

import numpy as np
import torch

import recon
from operators import ParallelBeamCT
from recon.priors.data import held_out_images
from recon.progress import tqdm_callback

truth = held_out_images("ct", 128)[1]  # a phantom the prior never saw
physics = ParallelBeamCT(image_size=128, n_angles=30)
y = physics.A(torch.from_numpy(truth)[None, None])  # the sinogram, (1, 1, 30, n_detectors)

result = recon.reconstruct(y, physics, method="ccdf", prior="ct", n_samples=8, steps=20, t0="auto", seed=0,
                           callback=tqdm_callback("ccdf"))


def psnr(image):
    return 10 * np.log10(1.0 / np.mean((image - truth) ** 2))


print(f"FBP  PSNR {psnr(result.initial[0]):.2f} dB")
print(f"CCDF PSNR {psnr(result.mean[0]):.2f} dB  (t0 = {result.metadata['t0']:.2f}, "
      f"{result.metadata['n_network_evals']:.1f} network evaluations per sample, {result.metadata['wall_time_s']:.1f} s)")
print(f"mean std {result.std.mean():.4f}; coverage: {recon.uncertainty.calibration(result, truth[None])}")
result.save("ct_ccdf.h5", overwrite=True)  # open with `recon view ct_ccdf.h5`
