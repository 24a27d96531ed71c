"""`reconstruct` refuses bad input before any work, and its bookkeeping is right.

A tiny stand-in denoiser counts its calls, so "before any work" is checked as "no network evaluation
happened"; deepinv's own operators keep the tests to seconds.
"""

import copy

import numpy as np
import pytest
import torch

from recon.methods import METHODS, PRIOR_METHODS, reconstruct
from recon.progress import Cancelled
from methods_stand_ins import CountingBlur, N, tomography_case


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


@pytest.mark.parametrize("prior", [torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Identity(), lambda x: x])
def test_a_prior_that_is_not_called_as_a_denoiser_is_refused_before_any_work(ct, prior, monkeypatch):
    """It used to fail at the first network call, after the pseudo-inverse, with torch's own TypeError."""
    physics, _, y = ct
    monkeypatch.setattr(physics, "A_dagger", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(TypeError, match=r"prior\(x, sigma\)"):
        reconstruct(y, physics, prior=prior)


def test_a_negative_noise_level_from_the_noise_model_is_refused(ct):
    """deepinv's GaussianNoise takes sigma=-0.5; the calibration then used it."""
    import deepinv

    physics, _, y = ct
    noisy = copy.deepcopy(physics)
    noisy.noise_model = deepinv.physics.GaussianNoise(sigma=-0.5)
    with pytest.raises(ValueError, match="noise std of -0.5"):
        reconstruct(y, noisy, prior=CountingBlur(), n_samples=2, steps=2)


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
        (dict(init=None), ValueError, "init"),
        (dict(method="tv", prior="ct"), ValueError, "'tv' uses no prior"),  # was ignored without a word
        (dict(method="fbp", prior="auto"), ValueError, "'fbp' uses no prior"),
    ],
)
def test_bad_arguments_fail_before_any_network_evaluation(ct, kwargs, error, match, monkeypatch):
    """No network call and no operator pass: A_dagger is the first piece of work reconstruct does."""
    physics, _, y = ct
    counting = CountingBlur()
    prior = kwargs.pop("prior", counting if kwargs.get("method", "ccdf") in PRIOR_METHODS else None)
    pseudo_inverse_calls = []
    monkeypatch.setattr(physics, "A_dagger", lambda *a, **k: pseudo_inverse_calls.append(1))
    with pytest.raises(error, match=match):
        reconstruct(y, physics, prior=prior, **{"method": "ccdf", **kwargs})
    assert counting.calls == 0 and not pseudo_inverse_calls


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


def test_a_volume_shaped_measurement_with_a_deepinv_physics_is_refused_before_any_work():
    """A 5-D y made a deepinv physics' image (C, D, H, W): it failed at the first network call, after the
    pseudo-inverse, with the prior's shape error."""
    import deepinv

    physics, prior = deepinv.physics.Inpainting(img_size=(1, N, N), mask=0.5), CountingBlur()
    with pytest.raises(ValueError, match="a prior denoises 2-D images"):
        reconstruct(torch.rand(1, 1, 1, N, N), physics, prior=prior, n_samples=2)
    assert prior.calls == 0
    assert reconstruct(torch.rand(1, 1, 1, N, N), physics, method="tv").mean.shape == (1, 1, N, N)  # no prior: fine


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

    with pytest.raises(ValueError, match="NaN or Inf values in samples, mean \("):
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


def test_a_batch_with_one_bad_measurement_is_refused_before_any_work(ct):
    physics, _, y = ct
    prior = CountingBlur()
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"measurement\(s\) \[1\]"):
        reconstruct(torch.cat([y, bad]), physics, prior=prior)
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
    reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.5, calibrate=False,
                callback=lambda s, t, p: seen.append((s, t, tuple(p.shape))))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in seen)
    assert seen[-1][2] == (1, 1, N, N)


def test_progress_counts_the_self_validation_run_before_the_samples(ct):
    physics, _, y = ct
    seen = []
    reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.5, callback=lambda s, t, p: seen.append((s, t)))
    assert seen == [(s, 8) for s in range(1, 9)]


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


def test_numpy_integer_t0_is_accepted(ct):
    physics, _, y = ct
    result = reconstruct(y, physics, prior=CountingBlur(), t0=np.int64(1), steps=2, n_samples=1)
    assert result.metadata["t0"] == 1.0


def test_reconstruct_steps_yields_progress_returns_the_result_and_leaves_grad_mode_alone():
    """The generator form of reconstruct: the caller's autograd stays on between steps, and the
    Result equals reconstruct's."""
    from recon.methods import reconstruct_steps
    from recon.progress import Step

    physics, _, y = tomography_case()
    steps = reconstruct_steps(y, physics, method="tv", max_iter=20)
    seen = []
    try:
        while True:
            seen.append(next(steps))
            assert torch.is_grad_enabled()
    except StopIteration as done:
        result = done.value
    assert [s.step for s in seen] == [10, 20] and all(isinstance(s, Step) for s in seen)
    np.testing.assert_array_equal(result.mean, reconstruct(y, physics, method="tv", max_iter=20).mean)


def test_a_measurement_without_its_channel_axis_is_named_as_such():
    """It was refused as "y must be one measurement (batch of one)", which named the wrong axis."""
    import operators

    physics = operators.ParallelBeamCT(image_size=32, n_angles=20)
    with pytest.raises(ValueError, match=r"y has shape \(20, \d+\), the operator measures \(1, 20, \d+\): add the "
                                         r"channel axis"):
        reconstruct(np.ones((20, physics.n_detectors), np.float32), physics, method="fbp")
