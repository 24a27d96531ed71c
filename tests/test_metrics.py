import numpy as np
import pytest
import torch

from recon.metrics import psnr, psnr_per_image


def test_psnr_conventions():
    reference = np.zeros((8, 8))
    reference[2:6, 2:6] = 0.5
    estimate = reference + 0.01
    assert psnr(estimate, reference) == pytest.approx(40.0)  # peak 1: 10 log10(1 / 1e-4)
    assert psnr(estimate, reference, data_range=None) == pytest.approx(40.0 + 20 * np.log10(0.5))
    assert psnr(reference + 2.0, reference, clip=(0, 1)) < psnr(reference + 2.0, reference) + 20
    assert psnr(np.clip(reference + 0.6, 0, 1), reference) == psnr(reference + 0.6, reference, clip=(0, 1))
    assert psnr(reference, reference) == float("inf")
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(estimate[:4], reference)


def test_batched_psnr_matches_the_numpy_one():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 1, 16, 16, generator=generator)
    estimate = reference + 0.05 * torch.randn(3, 1, 16, 16, generator=generator)
    batched = psnr_per_image(estimate, reference)
    for i in range(3):
        assert float(batched[i]) == pytest.approx(psnr(estimate[i].numpy(), reference[i].numpy(), clip=(0, 1)), abs=1e-4)
