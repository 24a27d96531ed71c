"""deepinv's own physics in their conventions: complex MRI images as two channels, batches of measurements."""

import deepinv as dinv
import numpy as np
import torch

from methods_stand_ins import tomography_case
from recon.methods import reconstruct

N = 32


def _mri_case():
    mask = torch.zeros(N, N)
    mask[:, ::3] = 1
    mask[:, N // 2 - 3 : N // 2 + 3] = 1
    physics = dinv.physics.MRI(mask=mask, img_size=(2, N, N))
    x = torch.zeros(1, 2, N, N)
    x[:, 0, 8:24, 10:22] = 0.8
    x[:, 0, 12:16, 12:18] = 0.3
    return physics, x, physics.A(x)


def test_deepinv_mri_with_two_channel_complex_images(single_torch_thread):
    physics, x, y = _mri_case()
    result = reconstruct(y, physics, n_samples=2, steps=5)
    assert result.mean.shape == (2, N, N)
    assert result.metadata["prior_name"] == "mri" and result.metadata["intensity_range_source"] == "auto, magnitude"
    truth = x[0].numpy()
    assert np.mean((result.mean - truth) ** 2) < np.mean((result.initial - truth) ** 2)


def test_a_batch_of_measurements_gives_one_result_each(single_torch_thread):
    physics, _, y = tomography_case()
    batch = torch.cat([y, 0.5 * y])
    results = reconstruct(batch, physics, method="tv", max_iter=10)
    assert isinstance(results, list) and len(results) == 2
    single = reconstruct(0.5 * y, physics, method="tv", max_iter=10, seed=1)
    assert np.array_equal(results[1].mean, single.mean) and results[1].metadata["seed"] == 1
