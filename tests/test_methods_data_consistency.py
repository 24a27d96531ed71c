"""Data consistency: measured k-space kept exactly, and the measurement noise level it is told or reads."""

import pytest
import torch
import deepinv as dinv

from recon.methods import reconstruct
from methods_stand_ins import CountingBlur, N


def test_mri_hard_data_consistency_matches_measured_kspace():
    """Noiseless MRI: after the last DC step every sample reproduces the measured k-space."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(N, N, generator=g) < 0.3).float()
    physics = dinv.physics.MRI(mask=mask, img_size=(2, N, N))
    physics.complex_images = True  # deepinv's MRI images are complex; a 1-channel prior is folded
    x = torch.zeros(1, 2, N, N)
    x[:, 0, 8:24, 8:24] = 1.0
    y = physics.A(x)
    result = reconstruct(y, physics, prior=CountingBlur(channels=1), n_samples=2, steps=3, t0=0.3)
    assert result.samples.shape == (2, 2, N, N)
    residual = physics.A(torch.from_numpy(result.samples)) - y
    assert float(residual.abs().max()) < 1e-4 * float(y.abs().max())


def test_log_poisson_ct_noise_is_not_treated_as_noiseless():
    from operators import LogPoissonNoise, ParallelBeamCT

    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.1  # attenuation per pixel: line integrals up to ~1.6
    physics = ParallelBeamCT(N, n_angles=20, noise_model=LogPoissonNoise(I0=1e3, rng=torch.Generator().manual_seed(0)))
    y = physics(x)
    empirical = float((y - physics.A(x)).std())
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, device="cpu")
    assert result.metadata["noise_sigma"] == pytest.approx(empirical, rel=0.2)


def test_a_user_given_noise_level_reaches_the_initial_estimate():
    """SR's A_dagger stops at the noise radius when reconstruct is told the level, and fits y when not."""
    import operators

    physics = operators.SuperResolution(image_size=32, factor=4)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = physics.A(x) + 0.05 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rms = {}
    for noise_sigma in (None, 0.02):  # bicubic's own misfit (~0.026 RMS) lies outside the 0.02 ball
        mean = reconstruct(y, physics, method="fbp", noise_sigma=noise_sigma, intensity_range=None).mean
        rms[noise_sigma] = float((physics.A(torch.as_tensor(mean)[None]) - y).pow(2).mean().sqrt())
    assert rms[None] < 1e-3 and rms[0.02] == pytest.approx(0.02, rel=1e-3)  # stops on the noise ball


def _dense_ct(size=40, views=64):
    from operators import ParallelBeamCT

    return ParallelBeamCT(size, n_angles=views)


def _smooth_image(size, seed=0):
    noise = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, 1, 2)


@pytest.mark.parametrize("size", [40, 39])
def test_fft_normal_operator_is_close_to_the_projectors_normal_operator(size):
    """A^T A of dense-view parallel-beam CT as one convolution: a few % off on smooth images, at
    even and odd sizes (the kernel's pixel must sit where the image's pixels sit)."""
    from recon.methods.data_consistency import FFTNormal

    physics = _dense_ct(size)
    x = _smooth_image(size)
    exact = physics.A_adjoint(physics.A(x))
    approx = FFTNormal(physics)(torch.cat([x, 2 * x]))
    assert float((approx[:1] - exact).norm() / exact.norm()) < 0.05
    assert torch.allclose(approx[1:], 2 * approx[:1], rtol=1e-5, atol=1e-6)  # linear, per batch item


def test_fft_data_consistency_step_tracks_the_exact_step_at_dense_views():
    """The FFT normal only replaces A^T A inside the CG iterations; the right-hand side stays exact,
    so the step stays near the exact one (10 % at this size) and moves towards the data as much."""
    from recon.methods.data_consistency import DataConsistency

    physics = _dense_ct()
    x = _smooth_image(40)
    y = physics.A(x)
    z = _smooth_image(40, seed=1)
    exact = DataConsistency(physics, y, noise_sigma=0.01, normal="exact")
    fft = DataConsistency(physics, y, noise_sigma=0.01, normal="fft")
    assert exact.kind == "cg5" and fft.kind == "cg5-fft-refresh4"
    a, b = exact(z, 0.1), fft(z, 0.1)
    assert float((a - b).norm() / (a - z).norm()) < 0.15  # 3 % at LoDoPaB-CT's geometry (docs/speed.md)
    assert float(fft.residual(b)) < 0.5 * float(fft.residual(z))


def test_fft_step_projects_only_to_refresh_the_surrogates_error():
    """With the FFT normal the right-hand side is A^T y - N z - c, c = (A^T A - N) mean(z) with the
    projector every ``refresh`` steps: 2 projections per refresh for all K samples, exact for one
    sample on those steps, and in between far nearer the exact right-hand side's step than the
    surrogate alone."""
    from recon.methods.data_consistency import DataConsistency, cg_proximal_step

    physics = _dense_ct()
    y = physics.A(_smooth_image(40))
    calls = {"A": 0, "A_adjoint": 0}

    def counting(name, inner):
        def call(x, *args, **kwargs):
            calls[name] += x.shape[0]
            return inner(x, *args, **kwargs)
        return call

    def drift(k):  # two samples a sampler moves a little at each step
        return torch.cat([_smooth_image(40, seed=1), _smooth_image(40, seed=3)]) + 0.05 * k * _smooth_image(40, seed=9)

    estimates = [drift(k) for k in range(8)]
    every, refreshed = (DataConsistency(physics, y, noise_sigma=0.01, normal="fft", refresh=r) for r in (1, 4))
    steps = {}
    for dc in (every, refreshed):
        for name in calls:
            setattr(physics, name, counting(name, getattr(type(physics), name).__get__(physics)))
        calls.update(A=0, A_adjoint=0)
        steps[dc.refresh] = [dc(z, 0.1) for z in estimates]
        steps[dc.refresh, "calls"] = dict(calls)
        for name in calls:
            delattr(physics, name)
    assert steps[1, "calls"] == {"A": 8, "A_adjoint": 9} and steps[4, "calls"] == {"A": 2, "A_adjoint": 3}
    assert torch.allclose(steps[4][0], steps[1][0], atol=1e-5) and torch.allclose(steps[4][4], steps[1][4], atol=1e-5)
    normal = refreshed._normal
    damping = (0.01 / 0.1) ** 2
    for k in range(8):
        z = estimates[k]
        exact = cg_proximal_step(physics, z, y, damping, 5, normal)  # exact right-hand side per sample
        surrogate_only = cg_proximal_step(physics, z, y, damping, 5, normal, physics.A_adjoint(y) - normal(z))
        assert float((steps[4][k] - exact).norm()) < 0.25 * float((surrogate_only - exact).norm())
    single = DataConsistency(physics, y, noise_sigma=0.01, normal="fft")
    z = estimates[0][:1]
    assert torch.allclose(single(z, 0.1), cg_proximal_step(physics, z, y, damping, 5, single._normal), atol=1e-5)
    with pytest.raises(ValueError, match="refresh"):
        DataConsistency(physics, y, normal="fft", refresh=0)


def test_auto_normal_keeps_the_exact_step_where_projecting_is_cheap_or_views_are_sparse():
    """Default "auto": 30-view CT and small problems (explicit matrix) keep today's exact CG; a
    non-CT operator cannot take the FFT normal."""
    from operators import ParallelBeamCT
    from recon.methods.data_consistency import DataConsistency

    for physics in (ParallelBeamCT(128, n_angles=30), _dense_ct()):
        y = torch.zeros((1,) + tuple(physics.measurement_shape))
        assert DataConsistency(physics, y, 0.01).kind == "cg5"
    with pytest.raises(ValueError, match="ParallelBeamCT"):
        DataConsistency(CountingBlur(), torch.zeros(1, 1, N, N), normal="fft", use_project=False)
    with pytest.raises(ValueError, match="normal"):
        DataConsistency(_dense_ct(), torch.zeros(1, 1, 64, 57), normal="fast")


def test_auto_normal_takes_the_fft_for_dense_views_without_an_explicit_matrix(monkeypatch):
    """Dense views whose projector is too large for the sparse matrix (LoDoPaB-CT's geometry) take the
    FFT normal, also on the self-validation run's restricted data, scaled by the share kept."""
    from operators import _astra
    from recon.methods import data_consistency as dc_module
    from operators.base import RestrictedOperator

    monkeypatch.setattr(_astra, "MATRIX_MAX_NONZEROS", 0)
    physics = _dense_ct()
    y = physics.A(_smooth_image(40))
    assert dc_module.DataConsistency(physics, y, 0.01).kind == "cg5-fft-refresh4"
    keep = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < 0.875
    restricted = RestrictedOperator(physics, keep)
    assert dc_module.DataConsistency(restricted, y * keep, 0.01).kind == "cg5-fft-refresh4"
    x = _smooth_image(40, seed=2)
    exact = restricted.A_adjoint(restricted.A(x))
    approx = dc_module.fft_normal(restricted)(x)
    assert float((approx - exact).norm() / exact.norm()) < 0.1
