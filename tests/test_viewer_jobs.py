"""The viewer's job generator, manifest and light imports, all without Qt."""

import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest

from recon.progress import Cancelled, Step
from recon.result import Result
from recon.viewer import jobs


def _phantom(size=32):
    from recon.viewer.sample_data import shepp_logan

    return shepp_logan(size)


# ----------------------------------------------------------------------------- bad input, before work
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=np.zeros(32)), "2-D grayscale"),
        (dict(image=np.zeros((10, 40))), "at least 16 pixels"),
        (dict(image=np.zeros((30, 30)), operator=jobs.OperatorSettings(kind="sr", factor=4)), "divisible by 4"),
        (dict(image=np.full((32, 32), np.nan)), "NaN"),
        (dict(image=np.zeros((32, 32)), method="magic"), "unknown method.*one of"),
        (dict(image=np.zeros((32, 32)), steps=0), "steps"),
        (dict(image=np.zeros((32, 32)), n_samples=0), "samples"),
        (dict(), "exactly one"),
        (dict(measurement=np.zeros((30, 45))), "image_size"),
        (dict(measurement=np.zeros((30, 45)), image_size=(64,)), "image_size"),
        (dict(measurement=np.zeros((30, 45)), image_size=8), "at least 16"),
        (dict(measurement=np.zeros((30, 45)), image_size=True), "image_size"),
        (dict(measurement=np.zeros((30, 45)), image_size=(32.5, 40)), "image_size"),
    ],
)
def test_bad_requests_fail_before_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jobs.ReconstructionRequest(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(kind="pet"), "operator"), (dict(n_angles=0), "views"), (dict(noise=-0.1), "noise"),
     (dict(pattern="spiral"), "pattern"), (dict(factor=3), "factor")],
)
def test_bad_operator_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jobs.OperatorSettings(**kwargs)


def test_prior_defaults_to_the_operators_domain():
    for kind, prior in {"ct": "ct", "mri": "mri", "sr": "natural"}.items():
        request = jobs.ReconstructionRequest(image=np.zeros((32, 32)), operator=jobs.OperatorSettings(kind=kind))
        assert request.prior == prior


def test_a_method_without_a_prior_gets_none_and_refuses_one():
    request = jobs.ReconstructionRequest(image=np.zeros((32, 32)), method="tv")
    assert request.prior is None  # was the operator's default, passed on to reconstruct and ignored there
    with pytest.raises(ValueError, match="'fbp' uses no prior"):
        jobs.ReconstructionRequest(image=np.zeros((32, 32)), method="fbp", prior="ct")


# ----------------------------------------------------------------------------- generator mechanics
def _fake_job(total=50, progress=None):
    """A stand-in for the job: one step per method step, as recon.reconstruct_steps yields them."""
    progress = [] if progress is None else progress

    def job(request):
        for step in range(1, total + 1):
            progress.append(step)
            yield Step(step, total, np.full((1, 1, 8, 8), step, dtype=np.float32))
        return Result(mean=np.ones((1, 8, 8)), std=np.zeros((1, 8, 8)), metadata={"method": request.method})

    return job


def test_generator_yields_every_step_then_returns_the_result(monkeypatch):
    monkeypatch.setattr(jobs, "job_steps", _fake_job(total=5))
    gen = jobs.reconstruction_steps(jobs.ReconstructionRequest(image=np.zeros((32, 32)), method="fbp"))
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    assert [e.step for e in events] == [1, 2, 3, 4, 5] and events[-1].total == 5
    assert events[2].preview.shape == (8, 8) and events[2].preview[0, 0] == 3
    assert isinstance(stop.value.value, Result) and stop.value.value.metadata["method"] == "fbp"


def test_cancel_stops_at_the_next_step_in_the_consumers_thread(monkeypatch):
    done = []
    monkeypatch.setattr(jobs, "job_steps", _fake_job(total=10_000, progress=done))
    cancellation = jobs.Cancellation()
    gen = jobs.reconstruction_steps(jobs.ReconstructionRequest(image=np.zeros((32, 32))), cancellation)
    steps = [next(gen).step for _ in range(3)]
    gui = threading.Thread(target=cancellation.request)  # as the GUI thread does
    gui.start()
    gui.join()
    rest = list(gen)  # the generator returns None at the next step
    assert steps == [1, 2, 3] and rest == []
    assert (cancellation.requested_at_step, cancellation.stopped_at_step) == (3, 4) and done[-1] == 4
    assert not any(t.name == "diffrecon-job" for t in threading.enumerate())  # no helper thread


def test_closing_the_generator_stops_the_job(monkeypatch):
    done = []
    monkeypatch.setattr(jobs, "job_steps", _fake_job(total=10_000, progress=done))
    gen = jobs.reconstruction_steps(jobs.ReconstructionRequest(image=np.zeros((32, 32))))
    next(gen)
    gen.close()
    assert done == [1]  # the method was never asked for a second step


def test_method_errors_reach_the_consumer(monkeypatch):
    def failing(request):
        yield Step(1, 3, None)
        raise RuntimeError("prior exploded")

    monkeypatch.setattr(jobs, "job_steps", failing)
    gen = jobs.reconstruction_steps(jobs.ReconstructionRequest(image=np.zeros((32, 32))))
    assert next(gen).preview is None
    with pytest.raises(RuntimeError, match="prior exploded"):
        next(gen)


def test_cancellation_raises_the_progress_protocols_exception():
    cancellation = jobs.Cancellation()
    cancellation.check(4)
    cancellation.request()
    with pytest.raises(Cancelled):
        cancellation.check(5)
    assert (cancellation.requested_at_step, cancellation.stopped_at_step) == (4, 5)


# ----------------------------------------------------------------------------- real operators and methods
def _run_to_end(request):
    gen = jobs.reconstruction_steps(request)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        return events, stop.value


@pytest.mark.parametrize("settings", [
    jobs.OperatorSettings(kind="ct", n_angles=60),
    jobs.OperatorSettings(kind="ct", n_angles=60, noise=0.02),
    jobs.OperatorSettings(kind="mri", acceleration=4, pattern="variable-density"),
    jobs.OperatorSettings(kind="sr", factor=2),
], ids=["ct", "ct-noisy", "mri", "sr"])
def test_fbp_from_each_simulated_operator_beats_a_blank_image(settings):
    image = _phantom(64)
    request = jobs.ReconstructionRequest(image=image, operator=settings, method="fbp", n_samples=1)
    _, result = _run_to_end(request)
    assert result.mean.shape[-2:] == (64, 64)
    blank = jobs.psnr(np.zeros_like(image), image)
    assert result.metadata["psnr"] > blank + 6  # zero-filled 4x MRI is the weakest: about +7 dB
    assert result.metadata["viewer_job"]["operator"] == dataclasses.asdict(settings)
    assert (result.metadata["noise_sigma"] > 0) == (settings.noise > 0)  # the method was told the noise


def test_measurement_layer_reconstructs_like_the_simulation():
    """A sinogram with metadata (as the sample data makes it) gives the same result as simulating."""
    image = _phantom(32)
    settings = jobs.OperatorSettings(kind="ct", n_angles=20)
    y, _, sigma = jobs.simulate_measurement(image, settings)
    y = y[0].numpy()
    metadata = jobs.measurement_metadata(y, settings, 32, sigma)
    display = jobs.measurement_display(y, settings)
    assert display.shape == (20, y.shape[-1])
    job = dict(operator=jobs.OperatorSettings(kind="mri"), method="fbp", n_samples=1)
    from_layer = jobs.request_from_layer(display, metadata, **job)
    assert from_layer.operator == settings and from_layer.image is None
    _, measured = _run_to_end(from_layer)
    _, simulated = _run_to_end(jobs.ReconstructionRequest(image=image, **dict(job, operator=settings)))
    np.testing.assert_allclose(measured.mean, simulated.mean, atol=1e-5)


def test_an_edited_measurement_layer_is_reconstructed_as_shown():
    """Zeroing the sample sinogram's layer reconstructed the copy in its metadata, as if nothing had changed."""
    settings = jobs.OperatorSettings(kind="ct", n_angles=20)
    y = jobs.simulate_measurement(_phantom(32), settings)[0][0].numpy()
    metadata = jobs.measurement_metadata(y, settings, 32)
    edited = jobs.measurement_display(y, settings).copy()
    edited[:10] = 0  # half the views blanked in the viewer
    request = jobs.request_from_layer(edited, metadata, method="fbp", n_samples=1)
    np.testing.assert_array_equal(np.squeeze(request.measurement), edited)
    with pytest.raises(ValueError, match="operator settings no longer fit"):
        jobs.request_from_layer(edited[:, :-4], metadata, method="fbp", n_samples=1)


@pytest.mark.parametrize("name, metadata, expected", [
    ("phantom", {}, False), ("my sinogram", {}, False), ("gtx scan", {}, False),
    ("Ground Truth", {}, True), ("brain_gt", {}, True), ("ground-truth.tif", {}, True),
    ("phantom", {jobs.GROUND_TRUTH_KEY: True}, True),
    ("ct gt fbp mean", {"array": "mean"}, False),  # a result named after its input was scored against
    ("ct gt sinogram", {jobs.MEASUREMENT_KEY: {}}, False),
])
def test_only_a_layer_that_says_so_is_a_ground_truth(name, metadata, expected):
    assert jobs.is_ground_truth(name, metadata) is expected


@pytest.mark.parametrize("settings", [
    jobs.OperatorSettings(kind="ct", n_angles=45),
    jobs.OperatorSettings(kind="mri", acceleration=4),
    jobs.OperatorSettings(kind="sr", factor=2),
], ids=["ct", "mri", "sr"])
def test_an_unmarked_measurement_reconstructs_like_the_simulation(settings):
    """A user's own measurement (no metadata) of a known operator: its size is read off its shape."""
    image = _phantom(64)
    y, _, _ = jobs.simulate_measurement(image, settings)
    y = y[0].numpy()
    layer = y[0] if settings.kind != "mri" else y  # a sinogram or low-res image as a 2-D layer, k-space (2, H, W)
    widget_choice = dataclasses.replace(settings, n_angles=7)  # CT: the views come from the layer's rows
    request = jobs.plain_measurement_request(layer, widget_choice, method="fbp", n_samples=1)
    assert request.image is None and request.image_size == (64, 64)
    if settings.kind == "ct":
        assert (request.operator.n_angles, request.operator.n_detectors) == y.shape[-2:]
    _, measured = _run_to_end(request)
    _, simulated = _run_to_end(jobs.ReconstructionRequest(image=image, operator=settings, method="fbp", n_samples=1))
    np.testing.assert_allclose(np.squeeze(measured.mean), np.squeeze(simulated.mean), atol=1e-4)


@pytest.mark.parametrize("kind", ["ct", "mri", "sr"])
def test_an_image_of_any_size_is_simulated_and_reconstructed(kind):
    """The widget asked for square images with sides a multiple of 8; the priors pad and crop themselves."""
    image = _phantom(64)[6:50, 2:62]  # 44 x 60: neither square nor a multiple of 8
    settings = jobs.OperatorSettings(kind=kind, factor=2, n_angles=20)
    request = jobs.ReconstructionRequest(image=image, operator=settings, method="ccdf", steps=2, n_samples=1)
    assert request.image_size == (44, 60) and request.describe()["image_size"] == [44, 60]
    _, result = _run_to_end(request)
    assert np.squeeze(result.mean).shape == (44, 60) and np.isfinite(result.mean).all()
    assert tuple(result.metadata["operator_description"]["image_size"]) == (44, 60)

    y, _, sigma = jobs.simulate_measurement(image, settings)
    layer = jobs.measurement_display(y[0].numpy(), settings)
    marked = jobs.request_from_layer(layer, jobs.measurement_metadata(y[0].numpy(), settings, image.shape, sigma),
                                     method="fbp", n_samples=1)
    assert marked.image_size == (44, 60)
    _, from_layer = _run_to_end(marked)
    assert np.squeeze(from_layer.mean).shape == (44, 60)


@pytest.mark.parametrize("kind, layer_shape, image_size", [
    ("sr", (12, 20), (24, 40)), ("mri", (2, 40, 56), (40, 56)), ("ct", (30, 182), (128, 128)), ("ct", (30, 91), (64, 64)),
])
def test_an_unmarked_measurement_of_any_size_gives_the_image_it_measured(kind, layer_shape, image_size):
    """CT's side inverts the operator's default detector count (182 bins cover 128 px, not 129)."""
    rng = np.random.default_rng(0)
    request = jobs.plain_measurement_request(rng.random(layer_shape).astype(np.float32),
                                             jobs.OperatorSettings(kind=kind, factor=2), method="fbp", n_samples=1)
    assert request.image_size == image_size


def test_a_measurement_layer_marked_by_an_older_version_with_an_int_size_still_reconstructs():
    settings = jobs.OperatorSettings(kind="mri")
    y, _, _ = jobs.simulate_measurement(_phantom(32), settings)
    metadata = jobs.measurement_metadata(y[0].numpy(), settings, 32)
    metadata[jobs.MEASUREMENT_KEY]["image_size"] = 32
    request = jobs.request_from_layer(np.zeros((32, 32)), metadata, method="fbp", n_samples=1)
    assert request.image_size == (32, 32)


def test_undersampled_kspace_keeps_its_own_columns_whatever_the_widgets_mask_settings():
    """The mask was made up from the widget's pattern, acceleration and seed (the sampler's seed too): the
    same k-space gave 19.9, 18.0 and 17.3 dB at seeds 0, 1 and 2, and 8x was taken for 4x without a word."""
    image = _phantom(64)
    measured_with = jobs.OperatorSettings(kind="mri", acceleration=4, seed=5)
    y = jobs.simulate_measurement(image, measured_with)[0][0].numpy()
    truth_mask = jobs.build_operator(measured_with, 64).mask.cpu().numpy().reshape(-1, 64).max(0)
    means = []
    for seed, acceleration in ((0, 4), (1, 4), (2, 8)):
        request = jobs.plain_measurement_request(y, jobs.OperatorSettings(kind="mri", acceleration=acceleration,
                                                                          seed=seed), method="fbp", n_samples=1)
        np.testing.assert_array_equal(request.operator.mask, truth_mask)
        means.append(np.squeeze(_run_to_end(request)[1].mean))
    np.testing.assert_array_equal(means[0], means[1])
    np.testing.assert_array_equal(means[0], means[2])


@pytest.mark.parametrize("kind", ["ct", "mri", "sr"])
def test_the_noise_fraction_reaches_the_method_for_a_users_own_measurement(kind):
    """It was ignored: noise 0 and 0.1 gave byte-identical results, the method told sigma = 0."""
    settings = jobs.OperatorSettings(kind=kind, noise=0.05)
    y = jobs.simulate_measurement(_phantom(64), settings)[0][0].numpy()
    layer = y[0] if kind != "mri" else y
    request = jobs.plain_measurement_request(layer, settings, method="fbp", n_samples=1)
    measured = layer[:, :, np.any(layer != 0, axis=(0, 1))] if kind == "mri" else layer
    assert request.options["noise_sigma"] == pytest.approx(0.05 * np.sqrt(np.mean(measured.astype(np.float64) ** 2)))
    quiet = jobs.plain_measurement_request(layer, dataclasses.replace(settings, noise=0.0), method="fbp")
    assert "noise_sigma" not in quiet.options


@pytest.mark.parametrize("kind, shape, message", [
    ("ct", (4, 30, 45), "2-D"), ("sr", (2, 16, 24), "2-D"), ("mri", (64, 64), r"\(2, H, W\)"),
])
def test_an_unmarked_measurement_of_the_wrong_shape_is_refused(kind, shape, message):
    with pytest.raises(ValueError, match=message):
        jobs.plain_measurement_request(np.zeros(shape), jobs.OperatorSettings(kind=kind), method="fbp")
    with pytest.raises(ValueError, match="detectors"):
        jobs.OperatorSettings(n_detectors=0)


@pytest.mark.parametrize("kind, data, message", [
    ("ct", np.ones((30, 45), dtype=bool), "dtype bool \\(a mask\\?\\)"),
    ("sr", np.ones((16, 16), dtype=bool), "dtype bool"),
    ("mri", np.ones((64, 64), dtype=np.complex64), "dtype complex64; give k-space as"),
])
def test_a_mask_or_complex_layer_is_not_read_as_a_measurement(kind, data, message):
    """A labels/mask layer once became a sinogram of 0s and 1s, and complex k-space lost its imaginary part."""
    with pytest.raises(ValueError, match=message):
        jobs.plain_measurement_request(data, jobs.OperatorSettings(kind=kind), method="fbp")
    with pytest.raises(ValueError, match="real numbers"):
        jobs.ReconstructionRequest(measurement=data, image_size=32, operator=jobs.OperatorSettings(kind=kind))


# ----------------------------------------------------------------------------- packaging
def test_widget_module_does_not_import_torch():
    code = ("import sys; import recon.viewer.widget, recon.viewer.reader, recon.viewer.sample_data; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_widgets_lists_are_the_operators_own():
    """The widget writes the SR factors out (no torch on import); they must be the operator's."""
    from operators.sr import FACTORS

    assert jobs.SR_FACTORS == FACTORS


def test_manifest_is_valid_and_its_python_names_import():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "diffrecon", "--imports"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_manifest_contributes_reader_widget_and_samples():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("diffrecon")
    contributions = manifest.contributions
    assert [r.filename_patterns for r in contributions.readers] == [["*.h5", "*.hdf5"]]
    assert [w.display_name for w in contributions.widgets] == ["Reconstruct"]
    assert {s.key for s in contributions.sample_data} == {"ct_phantom", "mri_kspace"}
