"""`reconstruct` rejects bad input before any work, and its bookkeeping is right.

These tests use a tiny stand-in denoiser that counts its calls (so "before any work" is checked as
"no network evaluation happened") and deepinv's own operators, so they run in seconds.
"""

import numpy as np
import pytest
import torch
import deepinv as dinv

from recon.methods import METHODS, reconstruct
from recon.progress import Cancelled


class CountingBlur(torch.nn.Module):
    """Stand-in prior: a box blur whose width grows with sigma; counts network calls."""

    def __init__(self, channels=1):
        super().__init__()
        self.channels = channels
        self.metadata = {"name": "counting-blur", "checksum": "0" * 64, "sigma_min": 0.002, "sigma_max": 80.0}
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        k = max(1, int(round(min(s, 1.0) * 16)) | 1)
        return x if k == 1 else torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


N = 32


@pytest.fixture(scope="module")
def ct():
    torch.manual_seed(0)
    physics = dinv.physics.Tomography(angles=20, img_width=N, circle=False, normalize=True)
    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.8
    x[..., 12:16, 12:18] = 0.3
    return physics, x, physics.A(x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="magic"), ValueError, "ccdf"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(steps=0), ValueError, "steps"),
        (dict(t0=0.0), ValueError, "t0"),
        (dict(t0=1.5), ValueError, "t0"),
        (dict(t0="soon"), ValueError, "t0"),
        (dict(prior=CountingBlur(channels=3)), ValueError, "channel"),
        (dict(no_such_option=1), TypeError, "no_such_option"),
        (dict(intensity_range=(1.0, 0.0)), ValueError, "intensity_range"),
        (dict(method="genreg", objective="nope"), ValueError, "objective"),
        (dict(method="genreg", z_init="bogus"), ValueError, "z_init"),
        (dict(method="genreg", restart_spread=2.0), ValueError, "restart_spread"),
        (dict(method="genreg", restart_spread="0.1"), ValueError, "restart_spread"),
        (dict(method="genreg", generator_sigma_max=-1.0), ValueError, "generator_sigma_max"),
        (dict(method="genreg", generator_sigma_max=1e-3), ValueError, "generator_sigma_max"),
        (dict(method="genreg", generator_steps=0), ValueError, "generator_steps"),
        (dict(method="genreg", beta=-1.0), ValueError, "beta"),
        (dict(method="genreg", max_iter=2.5), ValueError, "max_iter"),
        (dict(zeta=1.5), ValueError, "zeta"),
        (dict(method="diffusion", zeta=-0.1), ValueError, "zeta"),
        (dict(sigma_end=0.0), ValueError, "sigma_end"),
        (dict(method="diffusion", sigma_end=float("nan")), ValueError, "sigma_end"),
        (dict(zeta=True), ValueError, "zeta"),
        (dict(method="tv", report_every=0), ValueError, "report_every"),  # used to loop forever
        (dict(method="tv", lambda_tv=float("nan")), ValueError, "lambda_tv"),
        (dict(method="tv", lambda_tv=-1.0), ValueError, "lambda_tv"),
        (dict(method="tv", max_iter=-3), ValueError, "max_iter"),
        (dict(steps=10**12), ValueError, "steps"),
        (dict(method="genreg", max_iter=10**12), ValueError, "max_iter"),
        (dict(seed=2**70), ValueError, "seed"),
        (dict(seed="abc"), ValueError, "seed"),
        (dict(seed=1.7), ValueError, "seed"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(t0_margin=0.0), ValueError, "t0_margin"),
        (dict(t0_margin=-1.0), ValueError, "t0_margin"),
        (dict(t0_margin=float("nan")), ValueError, "t0_margin"),
        (dict(noise_sigma="abc"), ValueError, "noise_sigma"),
        (dict(use_project="no"), ValueError, "use_project"),
        (dict(device="gpu"), ValueError, "device"),
        (dict(device="cuda:7"), ValueError, "cuda:7"),
        (dict(callback="print"), TypeError, "callback"),
    ],
)
def test_bad_arguments_fail_before_any_network_evaluation(ct, kwargs, error, match, monkeypatch):
    """No network call and no operator pass: A_dagger is the first piece of work reconstruct does."""
    physics, _, y = ct
    prior = kwargs.pop("prior", CountingBlur())
    pseudo_inverse_calls = []
    monkeypatch.setattr(physics, "A_dagger", lambda *a, **k: pseudo_inverse_calls.append(1))
    with pytest.raises(error, match=match):
        reconstruct(y, physics, prior=prior, **{"method": "ccdf", **kwargs})
    assert prior.calls == 0 and not pseudo_inverse_calls


@pytest.mark.parametrize("y, error, match", [
    (np.array(1.0), ValueError, "shape"),
    (torch.tensor(1.0), ValueError, "shape"),
    (torch.zeros(0, 1, 20, N), ValueError, "shape"),
    (np.ones((1, 20, N), dtype=bool), TypeError, "bool"),
    (torch.ones(1, 1, 20, N, dtype=torch.bool), TypeError, "bool"),
    (np.array([["a"]]), TypeError, "numbers"),
])
def test_measurements_that_are_not_arrays_of_numbers_are_refused(ct, y, error, match):
    physics, _, _ = ct
    with pytest.raises(error, match=match):
        reconstruct(y, physics, method="fbp")


@pytest.mark.parametrize("physics", [None, "ct", 3])
def test_something_that_is_not_an_operator_is_named(ct, physics):
    _, _, y = ct
    with pytest.raises(TypeError, match="physics must be a deepinv LinearPhysics"):
        reconstruct(y, physics, method="fbp")


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_extreme_measurement_scales_give_a_finite_std(ct, scale):
    """The std used to be computed in float32: inf at y x 1e20, 0 at y x 1e-30."""
    from operators import ParallelBeamCT

    _, x, _ = ct
    physics = ParallelBeamCT(N, n_angles=20)
    y = physics.A(x)
    result = reconstruct(y * scale, physics, prior=CountingBlur(), n_samples=3, steps=3, t0=0.3, device="cpu")
    assert np.isfinite(result.std).all() and np.isfinite(result.mean).all()
    relative = result.std.max() / np.abs(result.mean).max()
    reference = reconstruct(y, physics, prior=CountingBlur(), n_samples=3, steps=3, t0=0.3, device="cpu")
    assert relative == pytest.approx(reference.std.max() / np.abs(reference.mean).max(), rel=1e-2)


def test_a_non_finite_pseudo_inverse_is_named_before_the_method_runs(ct):
    physics, _, y = ct  # deepinv's Tomography overflows in its FBP at this scale
    prior = CountingBlur()
    with pytest.raises(ValueError, match="pseudo-inverse"):
        reconstruct(y * 1e20, physics, prior=prior, device="cpu")
    assert prior.calls == 0


def test_a_non_finite_reconstruction_is_an_error_not_a_result(ct):
    physics, _, y = ct

    class NaNPrior(CountingBlur):
        def forward(self, x, sigma):
            return torch.full_like(x, float("nan"))

    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct(y, physics, prior=NaNPrior(), n_samples=2, steps=2, t0=0.3, device="cpu")


def test_unknown_method_lists_the_known_ones(ct):
    physics, _, y = ct
    with pytest.raises(ValueError) as info:
        reconstruct(y, physics, method="dps", prior=CountingBlur())
    for name in METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_measurement_is_rejected(ct, bad):
    physics, _, y = ct
    y = y.clone()
    y[0, 0, 3, 4] = bad
    prior = CountingBlur()
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct(y, physics, prior=prior)
    assert prior.calls == 0


def test_batch_of_several_measurements_is_rejected(ct):
    physics, _, y = ct
    prior = CountingBlur()
    with pytest.raises(ValueError, match="batch of one"):
        reconstruct(torch.cat([y, y]), physics, prior=prior)
    assert prior.calls == 0


def test_same_seed_same_samples_other_seed_other_samples(ct):
    """Bitwise on the CPU. On CUDA deepinv's autograd adjoint (grid_sample's backward) adds with
    atomics, so two runs agree only to rounding (seen on an H100); hence device="cpu" here."""
    physics, _, y = ct
    run = dict(prior=CountingBlur(), n_samples=3, steps=4, t0=0.4, device="cpu")
    a = reconstruct(y, physics, **run, seed=7)
    b = reconstruct(y, physics, **run, seed=7)
    c = reconstruct(y, physics, **run, seed=8)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert np.abs(a.samples - c.samples).max() > 1e-4
    assert a.std.max() > 0  # the K samples differ from each other


def test_samples_run_as_one_batch_and_chunking_counts_the_same(ct):
    physics, _, y = ct
    prior = CountingBlur()
    one = reconstruct(y, physics, prior=prior, n_samples=4, steps=5, t0=0.3)
    assert prior.calls == 5  # one network call per step for all four samples
    chunked = reconstruct(y, physics, prior=CountingBlur(), n_samples=4, steps=5, t0=0.3, chunk_size=3)
    assert one.metadata["n_network_evals"] == chunked.metadata["n_network_evals"] == 5
    assert chunked.samples.shape == (4, 1, N, N)


def test_cpu_network_calls_are_cache_sized_and_cuda_takes_all_at_once():
    from recon.methods.batching import samples_per_call

    assert samples_per_call("cpu", (1, 128, 128), 8) == 4
    assert samples_per_call("cpu", (1, 256, 256), 8) == 2
    assert samples_per_call("cpu", (1, 512, 512), 8) == 1
    assert samples_per_call("cpu", (2, 256, 256), 8) == 1  # complex images: both parts go through the network
    assert samples_per_call("cpu", (1, 32, 32), 3) == 3
    assert samples_per_call("cuda", (1, 512, 512), 8) == 8


def test_default_chunks_on_the_cpu_are_recorded_and_the_probe_is_chunked_too():
    from recon.methods.ccdf import PROBE_SIGMAS, estimate_error_level

    physics = dinv.physics.Tomography(angles=20, img_width=128, circle=False, normalize=True)
    y = physics.A(torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)))
    prior = CountingBlur()
    result = reconstruct(y, physics, prior=prior, n_samples=8, steps=3, device="cpu")
    assert result.metadata["chunk_size"] == 4
    assert reconstruct(y, physics, method="fbp", chunk_size=4).metadata["chunk_size"] == 1  # one sample
    assert prior.calls == 3 + 2 * 3  # the probe's 10 images in 3 calls, then 3 steps for each of 2 chunks
    batches = []

    def denoise(x, sigma):
        batches.append(x.shape[0])
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) * (1 - sigma.view(-1, 1, 1, 1).clamp(max=1) / 4)

    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    chunked = estimate_error_level(denoise, x)
    assert batches == [4, 4, 2] and sum(batches) == len(PROBE_SIGMAS)
    probes = torch.tensor(PROBE_SIGMAS)
    whole = (denoise(x.expand(len(probes), 1, 128, 128), probes) - x).flatten(1).pow(2).mean(1).sqrt()
    from recon.methods.ccdf import interpolate_crossing
    assert chunked == pytest.approx(interpolate_crossing(PROBE_SIGMAS, (whole / probes).tolist(), 0.5), rel=1e-5)


def test_genreg_inverts_the_initial_estimate_once_per_run_not_per_chunk(ct, monkeypatch):
    """The DDIM inversion depends only on x_init: chunking the restarts must not repeat it."""
    import recon.methods.genreg as genreg

    physics, _, y = ct
    calls = []
    original = genreg.invert_probability_flow
    monkeypatch.setattr(genreg, "invert_probability_flow", lambda *a, **k: calls.append(1) or original(*a, **k))
    options = dict(method="genreg", objective="hard", prior=CountingBlur(), n_samples=3, max_iter=2, generator_steps=2, seed=0)
    whole = reconstruct(y, physics, **options)
    chunked = reconstruct(y, physics, chunk_size=1, **options)
    assert len(calls) == 2  # one per run
    assert whole.metadata["n_network_evals"] == chunked.metadata["n_network_evals"]


def test_metadata_records_what_was_used(ct):
    import recon

    physics, _, y = ct
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3)
    meta = result.metadata
    assert meta["method"] == "ccdf" and meta["steps"] == 3 and meta["n_samples"] == 2
    assert 0 < meta["t0"] <= 1 and meta["t0_requested"] == "auto"
    assert meta["prior_name"] == "counting-blur" and meta["prior_checksum"] == "0" * 64
    assert meta["version"] == recon.__version__ and meta["wall_time_s"] > 0
    assert meta["n_network_evals"] >= 3  # 3 steps plus the auto-t0 probe


def test_cancel_stops_within_one_step(ct):
    physics, _, y = ct
    prior = CountingBlur()
    seen = []

    def cancel_at_two(step, total, preview):
        seen.append(step)
        if step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        reconstruct(y, physics, prior=prior, n_samples=2, steps=10, t0=0.5, callback=cancel_at_two)
    assert seen == [1, 2]
    assert prior.calls == 2


def test_callback_gets_every_step_and_a_preview(ct):
    physics, _, y = ct
    seen = []
    reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.5, callback=lambda s, t, p: seen.append((s, t, tuple(p.shape))))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in seen)
    assert seen[-1][2] == (1, 1, N, N)


@pytest.mark.parametrize("method", ["fbp", "tv"])
def test_deterministic_baselines_have_one_sample_and_zero_std(ct, method):
    physics, _, y = ct
    result = reconstruct(y, physics, method=method, n_samples=5)
    assert result.samples.shape == (1, 1, N, N)
    assert not result.std.any()
    assert result.metadata["n_network_evals"] == 0


def test_intensity_mapping_returns_input_units(ct):
    """Scaling y by 1000 scales every output by 1000; an offset in the image shifts the result."""
    physics, x, y = ct
    base = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    scaled = reconstruct(1000 * y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    np.testing.assert_allclose(scaled.mean, 1000 * base.mean, rtol=1e-3, atol=1e-3 * 1000 * np.abs(base.mean).max())
    np.testing.assert_allclose(scaled.std, 1000 * base.std, rtol=1e-3, atol=1e-3 * 1000 * base.std.max())
    shifted = reconstruct(physics.A(x + 500.0), physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    assert abs(float(np.median(shifted.mean - base.mean)) - 500.0) < 5.0


def test_user_intensity_range_is_recorded_and_used(ct):
    physics, _, y = ct
    result = reconstruct(y, physics, method="fbp", intensity_range=(0.0, 2.0))
    assert result.metadata["intensity_range"] == [0.0, 2.0]
    assert result.metadata["intensity_range_source"] == "user"


def test_auto_range_pins_the_low_end_at_the_operators_floor_when_the_estimate_reaches_it():
    """30-view FBP dips below the air in the image; the map's ``lo`` is CT's floor 0, not that dip."""
    from operators import ParallelBeamCT

    physics = ParallelBeamCT(N, n_angles=10)
    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.8
    y = physics.A(x)
    assert float(physics.A_dagger(y).min()) < -0.01  # the streaks the floor guards against
    result = reconstruct(y, physics, method="fbp")
    assert result.metadata["intensity_range"][0] == 0.0
    assert result.metadata["intensity_range_source"] == "auto, operator floor"
    # an image with no air in view (all at 500 or above) keeps the percentile rule
    offset = reconstruct(physics.A(x + 500.0), physics, method="fbp")
    assert offset.metadata["intensity_range"][0] > 400.0
    assert offset.metadata["intensity_range_source"] == "auto"


def test_operators_without_a_physical_floor_keep_the_percentile_rule(ct):
    physics, _, y = ct  # deepinv's Tomography declares no floor
    result = reconstruct(y, physics, method="fbp")
    assert result.metadata["intensity_range_source"] == "auto"
    assert result.metadata["intensity_range"][0] < 0.0


def test_the_floor_is_pinned_only_when_the_estimate_reaches_it(caplog):
    """Pinned within FLOOR_REACH above the floor and FLOOR_WARNING below; kept (with a warning) far below."""
    from recon.methods.intensity import FLOOR_REACH, IntensityMap

    def ramp(lo):  # 0.5 percentile close to ``lo``, 99.5 percentile close to 1
        return torch.linspace(lo, 1.0, 64 * 64).reshape(1, 1, 64, 64)

    assert IntensityMap.from_estimate(ramp(-0.1), floor=0.0).lo == 0.0
    assert IntensityMap.from_estimate(ramp(0.5 * FLOOR_REACH), floor=0.0).lo == 0.0
    inside = IntensityMap.from_estimate(ramp(1.5 * FLOOR_REACH), floor=0.0)
    assert inside.lo > 0.1 and inside.source == "auto"
    with caplog.at_level("WARNING"):
        far = IntensityMap.from_estimate(ramp(-1.0), floor=0.0)  # e.g. HU data: air far below 0
    assert far.lo < -0.9 and far.source == "auto"
    assert "intensity floor" in caplog.text and "intensity_range" in caplog.text


def test_ct_and_mri_operators_declare_a_zero_floor_and_sr_none():
    import operators

    for cls in (operators.ParallelBeamCT, operators.FanBeamCT, operators.ConeBeamCT, operators.CartesianMRI):
        assert cls.intensity_floor == 0.0
    assert operators.SuperResolution.intensity_floor is None


def test_complex_images_are_labelled_as_magnitude_not_floor():
    import operators

    physics = operators.CartesianMRI(image_size=32, acceleration=4, seed=0, complex_images=True)
    x = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    result = reconstruct(physics.A(x), physics, method="fbp")
    assert result.metadata["intensity_range"][0] == 0.0
    assert result.metadata["intensity_range_source"] == "auto, magnitude"


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


@pytest.mark.cuda
def test_runs_on_cuda_by_default_and_agrees_with_cpu(ct):
    physics, _, y = ct
    gpu = reconstruct(y, physics, method="tv")
    assert gpu.metadata["device"].startswith("cuda")
    cpu = reconstruct(y, physics, method="tv", device="cpu")
    np.testing.assert_allclose(gpu.mean, cpu.mean, atol=1e-3)


def test_initial_estimate_can_be_tv_a_callable_or_an_earlier_result(ct):
    physics, x, y = ct
    calls = []

    def oracle(measurement, op):
        calls.append(tuple(measurement.shape))
        return x[0]

    on_cpu = dict(device="cpu")  # TV twice must agree to 1e-4: not so on CUDA (atomic adds), see above
    from_callable = reconstruct(y, physics, method="fbp", init=oracle, **on_cpu)
    assert calls and from_callable.metadata["init"] == "callable:oracle"
    np.testing.assert_allclose(from_callable.mean, x[0].numpy(), atol=1e-5)  # fbp returns the start as is
    earlier = reconstruct(y, physics, method="tv", **on_cpu)
    chained = reconstruct(y, physics, method="fbp", init=earlier, **on_cpu)
    assert chained.metadata["init"] == "result:tv"
    np.testing.assert_allclose(chained.mean, earlier.mean, atol=1e-5)
    from_tv = reconstruct(y, physics, method="fbp", init="tv", **on_cpu)
    np.testing.assert_allclose(from_tv.initial, earlier.mean, atol=1e-4)
    with pytest.raises(ValueError, match="init"):
        reconstruct(y, physics, method="fbp", init="magic")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_noise_sigma_is_rejected(ct, bad):
    physics, _, y = ct
    prior = CountingBlur()
    with pytest.raises(ValueError, match="noise_sigma"):
        reconstruct(y, physics, prior=prior, noise_sigma=bad)
    assert prior.calls == 0


def test_non_finite_initial_estimate_is_rejected(ct):
    physics, x, y = ct
    start = x[0].clone()
    start[0, 3, 3] = float("nan")
    prior = CountingBlur()
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct(y, physics, prior=prior, init=start.numpy(), n_samples=2, steps=3)
    assert prior.calls == 0


def test_tv_does_not_depend_on_the_global_torch_rng(ct):
    # the step size comes from a power iteration; it must use the run's fixed start, not torch's global RNG
    physics, _, y = ct
    torch.manual_seed(1)
    a = reconstruct(y, physics, method="tv", device="cpu", max_iter=20)
    torch.manual_seed(2)
    b = reconstruct(y, physics, method="tv", device="cpu", max_iter=20)
    np.testing.assert_array_equal(a.samples, b.samples)


def test_log_poisson_ct_noise_is_not_treated_as_noiseless():
    from operators import LogPoissonNoise, ParallelBeamCT

    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.1  # attenuation per pixel: line integrals up to ~1.6
    physics = ParallelBeamCT(N, n_angles=20, noise_model=LogPoissonNoise(I0=1e3, rng=torch.Generator().manual_seed(0)))
    y = physics(x)
    empirical = float((y - physics.A(x)).std())
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, device="cpu")
    assert result.metadata["noise_sigma"] == pytest.approx(empirical, rel=0.2)


@pytest.mark.parametrize("model", ["poisson", "poisson-unnormalised", "log-poisson"])
def test_deepinv_poisson_noise_levels_are_read_off_the_measurement(model):
    """deepinv's Poisson and log-Poisson models get their RMS std from y (were treated as noiseless)."""
    import deepinv as dinv

    from recon.methods.data_consistency import measurement_noise_sigma

    rng = torch.Generator().manual_seed(0)
    noise = {"poisson": dinv.physics.PoissonNoise(gain=0.02, rng=rng),
             "poisson-unnormalised": dinv.physics.PoissonNoise(gain=0.02, normalize=False, rng=rng),
             "log-poisson": dinv.physics.LogPoissonNoise(N0=1e3, mu=1 / 20, rng=rng)}[model]
    physics = dinv.physics.Denoising(noise_model=noise)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 5 + 0.5
    y = physics(x)
    clean = x / 0.02 if model == "poisson-unnormalised" else x
    empirical = float((y - clean).pow(2).mean().sqrt())
    assert measurement_noise_sigma(physics, y) == pytest.approx(empirical, rel=0.1)


def test_user_intensity_range_offsets_only_the_real_part_of_complex_images():
    from operators import CartesianMRI

    x = torch.zeros(1, 2, N, N)
    x[:, 0, 8:24, 10:22] = 0.8
    x[:, 1, 12:20, 12:20] = 0.2
    physics = CartesianMRI(N, acceleration=2, center_fraction=0.2, complex_images=True)
    y = physics.A(x)
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, device="cpu", intensity_range=(-0.5, 1.5))
    mean = torch.from_numpy(result.mean)[None]
    assert float((physics.A(mean) - y).norm() / y.norm()) < 1e-4  # hard DC holds in the user's units
    assert float(mean[0, 1].mean()) == pytest.approx(float(x[0, 1].mean()), abs=1e-4)


@pytest.mark.parametrize("given", [np.array([0.0, 2.0]), torch.tensor([0.0, 2.0]), [0, 2]])
def test_intensity_range_as_an_array_or_tensor_is_used_and_recorded(ct, given):
    physics, _, y = ct
    result = reconstruct(y, physics, method="fbp", intensity_range=given)
    assert result.metadata["intensity_range"] == [0.0, 2.0]
    assert result.metadata["parameters"]["intensity_range"] == [0.0, 2.0]


@pytest.mark.parametrize("bad", [5.0, "ab", (0.0, 1.0, 2.0)])
def test_malformed_intensity_range_is_a_value_error(ct, bad):
    physics, _, y = ct
    with pytest.raises(ValueError, match="intensity_range"):
        reconstruct(y, physics, method="fbp", intensity_range=bad)


def test_numpy_integer_t0_is_accepted(ct):
    physics, _, y = ct
    result = reconstruct(y, physics, prior=CountingBlur(), t0=np.int64(1), steps=2, n_samples=1)
    assert result.metadata["t0"] == 1.0


def test_a_noise_model_without_gaussian_sigma_is_named_in_a_warning(caplog):
    """A model with no sigma and no rule of ours (deepinv's uniform noise) counts as noiseless, and the
    user is told so, not left guessing."""
    import logging

    import deepinv as dinv

    from recon.methods.data_consistency import measurement_noise_sigma

    physics = dinv.physics.Denoising(noise_model=dinv.physics.UniformNoise(a=0.1))
    with caplog.at_level(logging.WARNING, logger="recon.methods.data_consistency"):
        assert measurement_noise_sigma(physics, torch.ones(1, 1, 4, 4)) == 0.0
    assert "UniformNoise" in caplog.text and "noise_sigma" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recon.methods.data_consistency"):
        assert measurement_noise_sigma(dinv.physics.Denoising(noise_model=dinv.physics.GaussianNoise(0.05))) == pytest.approx(0.05)
    assert caplog.text == ""


def test_auto_t0_error_level_is_interpolated_between_probes_and_safe_with_nan():
    from recon.methods.ccdf import interpolate_crossing

    levels = (0.1, 0.2, 0.4)
    assert interpolate_crossing(levels, [0.9, 0.6, 0.4], 0.5) == pytest.approx(0.2 * 2 ** 0.5)  # halfway in log s
    assert interpolate_crossing(levels, [0.9, 0.8, 0.7], 0.5) == 0.4  # never falls below: the largest probe
    assert interpolate_crossing(levels, [0.4, 0.3, 0.2], 0.5) == 0.1  # below from the start: the smallest
    assert interpolate_crossing(levels, [0.9, 0.6, float("nan")], 0.5) == 0.2  # a NaN probe snaps, never NaN



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


def auto_margin(physics, size=32, **options):
    """The auto-t0 margin ``reconstruct`` picks for ``physics`` on a random image (stand-in prior, 2 steps)."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    result = reconstruct(physics.A(x), physics, prior=CountingBlur(), n_samples=1, steps=2, device="cpu", **options)
    return result.metadata["t0_margin"]


@pytest.mark.parametrize("kind, factor, margin", [("mri", 4, None), ("mri", 8, None), ("sr", 2, 8.0), ("sr", 8, 32.0)])
def test_auto_t0_projection_margin_grows_as_measurements_per_unknown_fall(kind, factor, margin):
    """Exact projections: margin = 2 / r within [4, 32]. MRI: r = 2 * sampled fraction (4 at 4x, 8 at 8x
    on a 128 px mask); SR: r = 1 / factor^2 (x2: 8; x8: 64, clamped to 32)."""
    import operators

    if kind == "mri":
        physics = operators.CartesianMRI(image_size=32, acceleration=factor, seed=0)
        margin = min(max(2.0 / (2 * float(physics.mask.float().mean())), 4.0), 32.0)
    else:
        physics = operators.SuperResolution(image_size=32, factor=factor)
    assert auto_margin(physics) == pytest.approx(margin, rel=0.01)


@pytest.mark.parametrize("size, views, margin", [
    (64, 8, 0.565),  # 0.159 measured bins per pixel (90% of the 8 x 91 bins see the image): inside the fit
    (64, 2, 1.2),    # 0.032: the upper clamp
    (32, 30, 0.1)])  # 1.2: over-sampled, the lower clamp
def test_auto_t0_cg_margin_grows_as_measurements_per_unknown_fall(size, views, margin):
    """CG data consistency: margin = 0.09 / (measured values per unknown) within [0.1, 1.2]; fewer views start higher."""
    import operators

    physics = operators.ParallelBeamCT(image_size=size, n_angles=views)
    assert auto_margin(physics, size) == pytest.approx(margin, abs=2e-3)


@pytest.mark.parametrize("kind", ["mri", "sr", "inpainting"])
def test_auto_t0_cg_margin_counts_what_is_measured_not_the_zero_fill(kind):
    """Masking operators keep the image's shape and zero-fill; only the measured values count.

    MRI 4x without its projection: a real image, 2 real values per sampled k-space point, so
    r = 2 * (sampled fraction), less the few k-space points a real image makes real (DC); SR x2: r = 1/4;
    deepinv's Inpainting keeping half the pixels: r = 1/2.
    """
    import operators

    if kind == "mri":
        physics = operators.CartesianMRI(image_size=32, acceleration=4, seed=0)
        ratio = 2 * float(physics.mask.float().mean())
    elif kind == "sr":
        physics, ratio = operators.SuperResolution(image_size=32, factor=2), 0.25
    else:
        mask = (torch.arange(32 * 32).reshape(1, 32, 32) % 2).float()
        physics, ratio = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=mask), 0.5
    assert auto_margin(physics, use_project=False, intensity_range=None) == pytest.approx(0.09 / ratio, rel=0.01)


def test_measurements_per_unknown_counts_coils_once_and_refuses_an_operator_that_measures_nothing():
    """Multi-coil MRI samples the same k-space points in every coil: r equals the single-coil r."""
    import operators
    from recon.methods.ccdf import measurements_per_unknown
    from recon.methods.problem import Problem

    maps = torch.ones(4, 32, 32, dtype=torch.complex64) / 2  # 4 coils, sum of |maps|^2 = 1
    single = operators.CartesianMRI(32, acceleration=4, seed=0)
    multi = operators.CartesianMRI(32, acceleration=4, seed=0, coil_maps=maps)
    x = torch.zeros(1, 1, 32, 32)

    def ratio(physics):
        return measurements_per_unknown(Problem(physics=physics, y=physics.A(x), x_init=x, denoise=None, dc=None,
                                                generator=torch.Generator()))

    assert ratio(multi) == pytest.approx(ratio(single)) == pytest.approx(2 * float(single.mask.float().mean()), rel=0.01)
    nothing = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="nothing is measured"):
        ratio(nothing)


def test_auto_t0_start_follows_the_margin_and_a_given_margin_is_kept():
    """sigma(t0) = margin * estimated error: a user's margin is used as given and moves the start."""
    import operators
    from recon.methods.schedule import time_of_sigma

    physics = operators.ParallelBeamCT(image_size=32, n_angles=8)
    y = physics.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    runs = {m: reconstruct(y, physics, prior=CountingBlur(), n_samples=1, steps=2, t0_margin=m, device="cpu")
            for m in (0.5, 2.0)}
    for margin, result in runs.items():
        meta = result.metadata
        assert meta["t0_margin"] == margin
        assert meta["t0"] == pytest.approx(max(time_of_sigma(margin * meta["estimated_initial_error"]), 0.05))
    assert runs[2.0].metadata["t0"] > runs[0.5].metadata["t0"]
    fixed = reconstruct(y, physics, prior=CountingBlur(), n_samples=1, steps=2, t0=0.3, device="cpu").metadata
    assert fixed["t0"] == 0.3 and fixed.get("t0_margin") is None


def test_schedule_ends_at_sigma_end_and_keeps_the_start():
    """``sigma_end`` moves only the low end: the same t0 starts at the same level, never below the end."""
    from recon.methods.schedule import SIGMA_END, karras_sigmas, sigma_at

    default, short = karras_sigmas(10, 0.4, 0.002, 80.0), karras_sigmas(10, 0.4, 0.002, 80.0, sigma_end=SIGMA_END)
    assert float(short[0]) == pytest.approx(sigma_at(0.4, 0.002, 80.0)) == pytest.approx(float(default[0]))
    assert float(short[-2]) == pytest.approx(SIGMA_END) and float(default[-2]) == pytest.approx(0.002)
    assert float(short[-1]) == 0.0 and bool((short[:-1].diff() < 0).all())
    low = karras_sigmas(4, 0.05, 0.002, 80.0, sigma_end=SIGMA_END)  # start (0.006) below the end: on to sigma_min
    assert float(low[0]) < SIGMA_END and bool((low[:-1].diff() < 0).all()) and float(low[-2]) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="sigma_end"):
        karras_sigmas(4, 0.5, sigma_end=float("nan"))


def test_zeta_zero_walks_deterministically_and_one_draws_fresh_noise():
    """From the same noisy start, zeta 0 (DDIM) gives the same path whatever the random stream; zeta 1
    draws new noise at every step, so two streams give two different samples."""
    from recon.methods.diffusion import reverse_diffusion
    from recon.methods.problem import Problem
    from recon.methods.schedule import karras_sigmas

    prior, start = CountingBlur(), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(5, 0.5, 0.002, 80.0, sigma_end=0.01)

    def walk(zeta, seed):
        problem = Problem(physics=None, y=None, x_init=start, denoise=prior, dc=lambda z, s: z,
                          generator=torch.Generator().manual_seed(seed))
        return reverse_diffusion(problem, start.clone(), sigmas, zeta)

    assert torch.equal(walk(0.0, 1), walk(0.0, 2))
    assert not torch.allclose(walk(1.0, 1), walk(1.0, 2))
