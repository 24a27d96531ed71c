"""operators.noise: the rules that turn a noise model into the Gaussian std data consistency uses."""

import logging

import deepinv as dinv
import numpy as np
import pytest
import torch

from operators import LogPoissonNoise, ParallelBeamCT
from operators.noise import deepinv_poisson_std, log_poisson_std, measurement_noise_sigma


def _denoising(model):
    return dinv.physics.Denoising(noise_model=model)


def test_gaussian_models_give_their_sigma_and_no_model_gives_zero(caplog):
    with caplog.at_level(logging.WARNING, logger="operators.noise"):
        assert measurement_noise_sigma(_denoising(dinv.physics.GaussianNoise(0.05))) == pytest.approx(0.05)
    assert caplog.text == ""  # a model with a sigma is read without a warning
    assert measurement_noise_sigma(_denoising(dinv.physics.GaussianNoise(0.05)), torch.ones(1, 1, 4, 4)) == pytest.approx(0.05)
    assert measurement_noise_sigma(_denoising(dinv.physics.ZeroNoise())) == 0.0
    assert measurement_noise_sigma(object()) == 0.0  # an operator with no noise model at all


def test_our_log_poisson_model_matches_the_noise_it_draws():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.1  # line integrals up to ~1.6
    physics = ParallelBeamCT(32, n_angles=20, noise_model=LogPoissonNoise(I0=1e3, rng=torch.Generator().manual_seed(0)))
    y = physics(x)
    empirical = float((y - physics.A(x)).std())
    assert measurement_noise_sigma(physics, y) == pytest.approx(empirical, rel=0.2)
    assert measurement_noise_sigma(physics, y) == physics.noise_model.post_log_std(y)


@pytest.mark.parametrize("model", ["poisson", "poisson-unnormalised", "log-poisson"])
def test_deepinv_poisson_levels_are_read_off_the_measurement(model):
    rng = torch.Generator().manual_seed(0)
    noise = {"poisson": dinv.physics.PoissonNoise(gain=0.02, rng=rng),
             "poisson-unnormalised": dinv.physics.PoissonNoise(gain=0.02, normalize=False, rng=rng),
             "log-poisson": dinv.physics.LogPoissonNoise(N0=1e3, mu=1 / 20, rng=rng)}[model]
    physics = _denoising(noise)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 5 + 0.5
    y = physics(x)
    clean = x / 0.02 if model == "poisson-unnormalised" else x
    empirical = float((y - clean).pow(2).mean().sqrt())
    assert deepinv_poisson_std(noise, y) == pytest.approx(empirical, rel=0.1)
    assert measurement_noise_sigma(physics, y) == deepinv_poisson_std(noise, y)


def test_poisson_models_without_a_measurement_fall_back_to_the_gaussian_rule(caplog):
    assert deepinv_poisson_std(dinv.physics.GaussianNoise(0.1), torch.ones(4)) is None
    with caplog.at_level(logging.WARNING, logger="operators.noise"):
        assert measurement_noise_sigma(_denoising(dinv.physics.PoissonNoise(gain=0.02))) == 0.0
    assert "PoissonNoise" in caplog.text


def test_a_model_with_no_rule_counts_as_noiseless_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="operators.noise"):
        assert measurement_noise_sigma(_denoising(dinv.physics.UniformNoise(a=0.1)), torch.ones(1, 1, 4, 4)) == 0.0
    assert "UniformNoise" in caplog.text and "noise_sigma" in caplog.text


def test_one_log_poisson_rule_for_ours_deepinvs_and_lodopabs():
    """Our model is the rule at mu = 1; deepinv's LogPoissonNoise(N0, mu) and LoDoPaB-CT's observations
    (line integrals mu_max * y, 4096 photons, counts clamped at one photon) are the same rule."""
    from recon.batch import lodopab

    y = torch.linspace(0.0, 0.08, 500, dtype=torch.float64).reshape(1, 1, 20, 25)
    ours = LogPoissonNoise(I0=4096, min_counts=1.0)
    assert ours.post_log_std(lodopab.MU_MAX * y) == pytest.approx(lodopab.MU_MAX * log_poisson_std(y, 4096, lodopab.MU_MAX))
    deepinv_model = dinv.physics.LogPoissonNoise(N0=4096, mu=lodopab.MU_MAX)
    # deepinv keeps mu in float32
    assert deepinv_poisson_std(deepinv_model, y) == pytest.approx(log_poisson_std(y, 4096, lodopab.MU_MAX), rel=1e-6)
    assert lodopab.noise_sigma(y.numpy()[0, 0].astype(np.float32)) == pytest.approx(
        log_poisson_std(torch.from_numpy(y.numpy().astype(np.float32).astype(np.float64)), 4096, lodopab.MU_MAX), rel=1e-12)
    # by hand: per-bin std 1 / (mu sqrt(N0 exp(-mu y)))
    counts = 4096 * torch.exp(-lodopab.MU_MAX * y)
    assert log_poisson_std(y, 4096, lodopab.MU_MAX) == pytest.approx(float((1 / counts).mean().sqrt()) / lodopab.MU_MAX)


def test_starved_bins_are_clamped_at_min_counts():
    y = torch.full((1, 1, 4, 4), 50.0)  # exp(-50) of any dose: no photons
    assert log_poisson_std(y, 1e4, 1.0, min_counts=0.1) == pytest.approx(1 / 0.1 ** 0.5)
    assert log_poisson_std(y, 1e4) == pytest.approx(1.0)
