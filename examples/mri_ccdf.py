"""4x Cartesian MRI with CCDF, then the std map calibrated on a second slice.

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


# Fit the std scale on one slice with known truth, apply it to another.
scale = calibrate([run(slices[-1])], [slices[-1][None]])
result = apply_calibration(run(slices[0]), scale)
zero_filled = 10 * np.log10(1 / np.mean((result.initial[0] - slices[0]) ** 2))
ccdf = 10 * np.log10(1 / np.mean((result.mean[0] - slices[0]) ** 2))
print(f"zero-filled {zero_filled:.2f} dB -> CCDF {ccdf:.2f} dB; std scale {scale:.2f}")
print(calibration(result, slices[0][None]))
