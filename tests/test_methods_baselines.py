"""The deterministic baselines (FBP, TV) through `reconstruct`: one sample, no spread, no global RNG."""

import numpy as np
import pytest
import torch

from recon.methods import reconstruct
from methods_stand_ins import N, tomography_case


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


@pytest.mark.parametrize("method", ["fbp", "tv"])
def test_deterministic_baselines_have_one_sample_and_zero_std(ct, method):
    physics, _, y = ct
    result = reconstruct(y, physics, method=method, n_samples=5)
    assert result.samples.shape == (1, 1, N, N)
    assert not result.std.any()
    assert result.metadata["n_network_evals"] == 0


def test_tv_does_not_depend_on_the_global_torch_rng(ct):
    # the step size comes from a power iteration; it must use the run's fixed start, not torch's global RNG
    physics, _, y = ct
    torch.manual_seed(1)
    a = reconstruct(y, physics, method="tv", device="cpu", max_iter=20)
    torch.manual_seed(2)
    b = reconstruct(y, physics, method="tv", device="cpu", max_iter=20)
    np.testing.assert_array_equal(a.samples, b.samples)
