"""The napari plugin in a real viewer (run under Xvfb: ``xvfb-run -a .venv/bin/python -m pytest``).

napari's ``make_napari_viewer`` fixture comes from its pytest plugin (``napari.utils._testsupport``,
registered through napari's ``pytest11`` entry point), which also brings pytest-qt's ``qtbot``.
"""

import os
import sys

import h5py
import numpy as np
import pytest

from recon.result import Result

pytestmark = [
    pytest.mark.viewer,
    pytest.mark.skipif(sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
                       reason="needs an X server: run under xvfb-run (scripts/test.sh does)"),
]

WAIT_MS = 120_000
PLUGIN = "diffrecon"


def _phantom(size):
    from recon.viewer.sample_data import shepp_logan

    return shepp_logan(size)


def _saved_result(path, size=32):
    """A Result whose mean is a phantom and whose std is a ring: easy to tell apart on screen."""
    rng = np.random.default_rng(0)
    truth = _phantom(size)[None]
    yy, xx = np.mgrid[:size, :size] - size / 2
    ring = np.exp(-((np.hypot(yy, xx) - size / 3) ** 2) / 8)[None].astype(np.float32)
    samples = truth[None] + ring[None] * rng.normal(size=(4, 1, size, size)).astype(np.float32)
    result = Result(mean=samples.mean(0), std=samples.std(0), samples=samples, initial=truth,
                    metadata={"method": "ccdf", "prior": "ct", "psnr": 30.0})
    return result.save(path)


def _error_messages():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if str(n.severity).lower().endswith("error")]


def _dock_widget(viewer):
    from recon.viewer.widget import ReconstructWidget

    widget = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Reconstruct")
    return widget


def _run_and_wait(qtbot, widget):
    widget.run()
    assert widget.worker is not None, widget.status.value
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _add_ground_truth(viewer, image, name="phantom"):
    from recon.viewer.jobs import ground_truth_metadata

    return viewer.add_image(image, name=name, metadata=ground_truth_metadata())


def _view_rect(viewer):
    """World rectangle ``(low, high)`` (y, x) that each grid cell shows with the current camera."""
    cell = np.asarray(viewer.canvas.viewbox_size(viewer.layers), dtype=float)
    center = np.asarray(viewer.camera.center[-2:], dtype=float)
    half = cell / (2 * viewer.camera.zoom)
    return center - half, center + half


def _assert_whole_layers_in_view(viewer):
    """Every shown layer, pixel edges included, lies inside what its cell shows."""
    low, high = _view_rect(viewer)
    shown = [layer for layer in viewer.layers if layer.visible]
    assert shown
    for layer in shown:
        extent = np.asarray(layer.extent.world, dtype=float)[:, -2:]
        first, last = extent[0] - 0.5, extent[1] + 0.5
        assert np.all(first >= low - 1e-6) and np.all(last <= high + 1e-6), (
            f"{layer.name} spans {first}..{last}, the view shows {low}..{high}")


def _assert_edges_are_background(shot, width=3):
    """A fitted view leaves a margin: the canvas' outer pixels are all background, no image touches them."""
    rgb = shot[..., :3].astype(float)
    edges = np.concatenate([rgb[:width].reshape(-1, 3), rgb[-width:].reshape(-1, 3),
                            rgb[:, :width].reshape(-1, 3), rgb[:, -width:].reshape(-1, 3)])
    assert float(np.abs(edges - edges[0]).max()) < 2, "an image reaches the edge of the canvas: the view is cropped"


def _assert_not_blank(viewer, min_std=10.0):
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[-1] in (3, 4)
    assert float(shot[..., :3].std()) > min_std, "the screenshot is blank"
    return shot


# ----------------------------------------------------------------------------- reader
def test_result_file_opens_with_our_reader_and_renders(make_napari_viewer, tmp_path):
    path = _saved_result(tmp_path / "slice.h5")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(path, plugin=PLUGIN)
    assert [layer.name for layer in layers] == [
        "slice mean", "slice uncertainty (std)", "slice initial", "slice samples"]
    mean, std = viewer.layers["slice mean"], viewer.layers["slice uncertainty (std)"]
    assert mean.colormap.name == "gray" and std.colormap.name == "magma"
    assert mean.metadata["method"] == "ccdf" and mean.metadata["psnr"] == 30.0
    assert viewer.layers["slice samples"].data.shape == (4, 32, 32)
    viewer.grid.enabled = True
    for layer in viewer.layers:
        layer.visible = layer.name in ("slice mean", "slice uncertainty (std)")
    _assert_not_blank(viewer)


def test_recon_view_shows_every_layer_whole_in_the_grid(make_napari_viewer, tmp_path, qtbot):
    from recon.viewer import commands

    path = _saved_result(tmp_path / "slice.h5", size=64)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1100, 700)
    qtbot.wait(50)
    commands.open_files([path], viewer=viewer)
    qtbot.wait(50)
    assert commands.grid_of(viewer).enabled
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert shown == ["slice mean", "slice uncertainty (std)"]
    assert commands.grid_of(viewer).actual_shape(viewer.layers) in ((1, 2), (2, 1))
    _assert_whole_layers_in_view(viewer)
    shot = _assert_not_blank(viewer)
    _assert_edges_are_background(shot)


def test_std_lets_the_mean_show_through_outside_grid_mode(make_napari_viewer, tmp_path):
    path = _saved_result(tmp_path / "slice.h5", size=64)
    viewer = make_napari_viewer(show=True)
    viewer.open(path, plugin=PLUGIN)
    assert not viewer.grid.enabled
    mean, std = viewer.layers["slice mean"], viewer.layers["slice uncertainty (std)"]
    assert mean.visible and std.visible and std.blending == "additive"

    def gray(shot):
        return shot[..., :3].astype(float).mean(-1).ravel()

    both = gray(viewer.screenshot(canvas_only=True, flash=False))
    std.visible = False
    mean_only = gray(viewer.screenshot(canvas_only=True, flash=False))
    std.visible, mean.visible = True, False
    std_only = gray(viewer.screenshot(canvas_only=True, flash=False))
    # the phantom (mean) is still what the picture shows, not the ring (std) alone
    assert np.corrcoef(both, mean_only)[0, 1] > 0.8
    assert np.corrcoef(both, mean_only)[0, 1] > np.corrcoef(both, std_only)[0, 1]


def test_batch_output_opens_as_stacks(make_napari_viewer, tmp_path):
    from test_viewer_reader import write_real_batch_output

    path, truth = write_real_batch_output(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert viewer.layers["study mean"].data.shape == truth.shape == (3, 32, 32)
    assert viewer.dims.nsteps[0] == 3  # a slider over the slices
    assert len(viewer.layers["study mean"].metadata["psnr"]) == 3


# ----------------------------------------------------------------------------- widget
def test_widget_runs_fbp_then_ccdf_to_completion(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    truth = _phantom(64)
    _add_ground_truth(viewer, truth)
    widget = _dock_widget(viewer)
    assert widget.layer.value == "phantom" and widget.input_kind.value == "image"

    widget.operator.value, widget.n_angles.value, widget.method.value = "ct", 30, "fbp"
    _run_and_wait(qtbot, widget)
    fbp_mean = viewer.layers["phantom fbp mean"]
    assert "phantom fbp uncertainty (std)" in viewer.layers
    fbp_psnr = fbp_mean.metadata["psnr"]
    assert fbp_psnr > 15

    widget.layer.value = "phantom"
    widget.method.value, widget.prior.value, widget.steps.value, widget.samples.value = "ccdf", "ct", 2, 2
    seen = []
    widget.run()
    widget.worker.yielded.connect(lambda event: seen.append((event.step, event.total, event.preview is not None)))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert "phantom ccdf mean" in viewer.layers, widget.status.value
    mean = viewer.layers["phantom ccdf mean"]
    std = viewer.layers["phantom ccdf uncertainty (std)"]
    assert mean.data.shape == std.data.shape == (64, 64)
    assert float(std.data.max()) > 0  # two samples differ somewhere
    assert seen and seen[-1][0] == seen[-1][1] and any(has_preview for *_, has_preview in seen)
    assert "diffrecon preview" not in viewer.layers
    assert np.isfinite(mean.metadata["psnr"])

    viewer.grid.enabled = True
    for layer in viewer.layers:
        layer.visible = layer in (mean, std)
    assert mean.visible and std.visible
    _assert_not_blank(viewer)


def test_the_widget_reconstructs_an_image_that_is_neither_square_nor_a_multiple_of_8(make_napari_viewer, qtbot):
    """It was refused ("a square image whose side is a multiple of 8"); the priors pad and crop themselves."""
    viewer = make_napari_viewer()
    _add_ground_truth(viewer, _phantom(64)[4:44, 2:58], name="oblong gt")  # 40 x 56
    widget = _dock_widget(viewer)
    widget.layer.value = "oblong gt"
    widget.operator.value, widget.method.value = "mri", "fbp"
    _run_and_wait(qtbot, widget)
    mean = viewer.layers["oblong gt fbp mean"]
    assert mean.data.shape == (40, 56) and np.isfinite(mean.metadata["psnr"]), widget.status.value


def _long_run_started(viewer, qtbot):
    """A 200-step ccdf job on a phantom, once its first step has come: ``(widget, worker, steps seen)``."""
    _add_ground_truth(viewer, _phantom(32))
    widget = _dock_widget(viewer)
    widget.method.value, widget.prior.value, widget.steps.value, widget.samples.value = "ccdf", "ct", 200, 1
    widget.run()
    worker, steps = widget.worker, []
    worker.yielded.connect(lambda event: steps.append(event.step))
    qtbot.waitUntil(lambda: len(steps) > 0, timeout=WAIT_MS)
    return widget, worker, steps


@pytest.mark.parametrize("route", ["widget button", "activity dock"])
def test_cancel_stops_mid_run(make_napari_viewer, qtbot, route):
    viewer = make_napari_viewer()
    widget, worker, steps = _long_run_started(viewer, qtbot)
    assert widget.cancel_button.enabled
    assert widget._progress.total == 200 and widget._progress.n >= 1  # the activity dock's bar moves
    assert "diffrecon preview" in viewer.layers
    if route == "widget button":
        widget.cancel_button.clicked.emit()
    else:
        widget._progress.cancel()  # what the Cancel button of the activity dock's progress bar calls
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    cancellation = widget.cancellation
    assert cancellation.stopped_at_step - cancellation.requested_at_step <= 1
    assert max(steps) < 200
    assert "phantom ccdf mean" not in viewer.layers and "diffrecon preview" not in viewer.layers
    assert widget.status.value == "cancelled" and widget.run_button.enabled


def test_a_job_outliving_its_widget_touches_nothing_and_a_second_start_is_refused(make_napari_viewer, qtbot):
    """Closing the viewer mid-run aborted the process (the job's late signals set a deleted QLabel); a second
    start() ran two jobs, the first no longer cancellable."""
    viewer = make_napari_viewer()
    widget, worker, steps = _long_run_started(viewer, qtbot)
    with pytest.raises(RuntimeError, match="a reconstruction is running"):
        widget.start(widget.build_request())
    widget.status.native.deleteLater()  # what closing the viewer does to the widget's Qt parts
    qtbot.waitUntil(lambda: _deleted(widget.status.native), timeout=WAIT_MS)
    from recon.viewer.jobs import Progress

    widget._on_progress(Progress(1, 200, None))  # a late signal: no RuntimeError from the deleted label
    widget.cancel()
    assert widget.cancellation.requested
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    assert max(steps) < 200


def test_a_stack_shown_along_other_axes_or_in_3d_is_refused_not_read_along_the_first(make_napari_viewer):
    """With the axes rolled the request held vol[15] while the viewer showed vol[:, 5, :]; in 3-D, vol[15] too."""
    viewer = make_napari_viewer()
    volume = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    viewer.add_image(volume, name="vol gt")
    widget = _dock_widget(viewer)
    widget.layer.value, widget.input_kind.value, widget.method.value = "vol gt", "image", "fbp"
    viewer.dims.set_point(0, 7)
    np.testing.assert_array_equal(widget.build_request().image, volume[7])  # the shown slice
    viewer.dims.order = (1, 0, 2)
    with pytest.raises(ValueError, match="other axes"):
        widget.build_request()
    viewer.dims.order = (0, 1, 2)
    viewer.dims.ndisplay = 3
    with pytest.raises(ValueError, match="in 3-D"):
        widget.build_request()


def test_a_renamed_input_layer_stays_the_input(make_napari_viewer):
    """Renaming the chosen layer made the widget fall back to the first layer, which Reconstruct then used."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="some other image")
    viewer.add_image(np.zeros((20, 46), np.float32), name="sino")
    widget = _dock_widget(viewer)
    widget.layer.value = "sino"
    viewer.layers["sino"].name = "my sinogram"
    assert widget.layer.value == "my sinogram"


def _deleted(qt_object) -> bool:
    try:
        qt_object.objectName()
    except RuntimeError:
        return True
    return False


def test_bad_input_is_reported_in_the_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 44), dtype=np.float32), name="odd")
    widget = _dock_widget(viewer)
    widget.layer.value = "odd"
    widget.input_kind.value = "image"
    widget.run()  # rejected before any work: no worker, an error notification
    assert widget.worker is None
    assert any("at least 16 pixels" in m for m in _error_messages())

    _add_ground_truth(viewer, _phantom(32))
    widget.layer.value = "phantom"
    widget.method.value, widget.steps.value = "ccdf", 2
    widget.prior.value = "ct"
    widget.build_request = lambda: _request_with_missing_prior()  # an error raised inside the worker
    _run_and_wait(qtbot, widget)
    assert any("reconstruction failed" in m for m in _error_messages())
    assert widget.run_button.enabled and widget.status.value.startswith("error")


def test_widget_takes_the_current_slice_of_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = np.stack([_phantom(32) * (i + 1) for i in range(4)])
    viewer.add_image(stack, name="stack")
    widget = _dock_widget(viewer)
    widget.input_kind.value = "image"
    viewer.dims.set_current_step(0, 2)
    request = widget.build_request()
    np.testing.assert_array_equal(request.image, stack[2])
    rgb = viewer.add_image(np.zeros((32, 32, 3), dtype=np.uint8), name="rgb", rgb=True)
    widget.layer.value = rgb.name
    with pytest.raises(ValueError, match="RGB"):
        widget.build_request()


def test_the_prior_box_is_hidden_and_not_sent_for_a_method_without_a_prior(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_phantom(32), name="phantom")
    widget = _dock_widget(viewer)
    widget.input_kind.value = "image"
    widget.method.value, widget.prior.value = "ccdf", "mri"
    assert widget.build_request().prior == "mri"
    widget.method.value = "tv"
    assert widget.build_request().prior is None and widget.prior.native.isHidden()  # hidden, not merely unshown
    widget.method.value = "genreg"
    assert widget.build_request().prior == "mri" and not widget.prior.native.isHidden()


def test_widget_defaults_to_a_shown_input_not_the_hidden_samples(make_napari_viewer, tmp_path):
    from recon.viewer.widget import NO_GROUND_TRUTH

    viewer = make_napari_viewer()
    viewer.open(_saved_result(tmp_path / "slice.h5"), plugin=PLUGIN)
    assert viewer.layers.selection.active.name == "slice samples"  # napari selects the last layer added
    widget = _dock_widget(viewer)
    chosen = viewer.layers[widget.layer.value]
    assert chosen.visible and chosen.name == "slice mean"
    assert widget.ground_truth.value == NO_GROUND_TRUTH
    viewer.layers.selection.active = viewer.layers["slice initial"]  # hidden: not followed
    assert widget.layer.value == "slice mean"


def test_widget_reconstructs_a_users_own_sinogram_without_ground_truth(make_napari_viewer, qtbot):
    from recon.viewer import jobs
    from recon.viewer.widget import NO_GROUND_TRUTH

    truth = _phantom(64)
    y, _, _ = jobs.simulate_measurement(truth, jobs.OperatorSettings(kind="ct", n_angles=45))
    sinogram = y[0, 0].numpy()  # (45, 91), carrying no diffrecon metadata: a user's own file
    viewer = make_napari_viewer()
    viewer.add_image(sinogram, name="my scan")
    widget = _dock_widget(viewer)
    assert widget.layer.value == "my scan"
    assert widget.input_kind.value == "measurement" and widget.ground_truth.value == NO_GROUND_TRUTH
    request = widget.build_request()
    assert request.image is None and request.image_size == (64, 64)
    assert (request.operator.n_angles, request.operator.n_detectors) == (45, 91)

    widget.method.value = "fbp"
    _run_and_wait(qtbot, widget)
    mean = viewer.layers["my scan fbp mean"]
    assert mean.data.shape == (64, 64) and mean.metadata["psnr"] is None  # nothing to score against

    viewer.add_image(truth, name="ground truth")  # says what it is by its name
    assert widget.ground_truth.value == "ground truth"
    widget.layer.value = "my scan"
    assert widget.input_kind.value == "measurement"
    _run_and_wait(qtbot, widget)
    from recon.viewer.jobs import psnr

    scored = [layer for layer in viewer.layers if layer.name.startswith("my scan fbp mean")][-1]
    assert scored.metadata["psnr"] == pytest.approx(psnr(scored.data, truth)) and scored.metadata["psnr"] > 15
    assert "ground truth" in widget.status.value


def test_a_long_error_keeps_the_canvas_wide(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    _add_ground_truth(viewer, _phantom(32))
    widget = _dock_widget(viewer)
    qtbot.wait(100)
    before = viewer.canvas.size[1]
    assert before > 400
    long_path = "/data/" + "a_really_long_folder_name_without_spaces_" * 20 + "prior.pt"
    message = f"could not load the prior from {long_path}: " + "the file is not there. " * 30
    widget._on_error(FileNotFoundError(message))  # what the worker's errored signal calls
    qtbot.wait(100)
    assert widget.status.value.startswith("error") and len(widget.status.value) <= 80
    assert message in widget.status.tooltip
    assert viewer.canvas.size[1] > 0.8 * before, "the error message squeezed the canvas"
    assert any("could not load the prior" in m for m in _error_messages())


def test_screenshot_shows_mean_and_std_whole(make_napari_viewer, tmp_path):
    from recon.viewer import commands
    from recon.viewer.screenshot import make_screenshot

    viewer = make_napari_viewer(show=True)
    out = tmp_path / "viewer.png"
    summary = make_screenshot(str(out), method="fbp", prior="ct", samples=1, size=(1200, 750), viewer=viewer,
                              timeout_s=120)
    assert out.is_file() and summary["psnr_mean_vs_phantom"] > 15
    assert "phantom sinogram fbp mean" in summary["layers"]
    assert "phantom sinogram fbp uncertainty (std)" in summary["layers"]
    assert commands.grid_of(viewer).enabled
    _assert_whole_layers_in_view(viewer)
    _assert_edges_are_background(_assert_not_blank(viewer))
    from matplotlib.image import imread

    saved = imread(str(out))
    assert saved.shape[0] >= 500 and saved.shape[1] >= 900


def _request_with_missing_prior():
    from recon.viewer import jobs

    return jobs.ReconstructionRequest(image=_phantom(32), method="ccdf", prior="/nonexistent/prior.pt", steps=2,
                                      n_samples=1)


def test_sample_sinogram_reconstructs_as_it_is(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "ct_phantom")
    assert [layer.name for layer in layers] == ["phantom", "phantom sinogram"]
    sinogram = viewer.layers["phantom sinogram"]
    assert sinogram.data.shape[0] == 30
    widget = _dock_widget(viewer)
    widget.layer.value = sinogram.name
    widget.operator.value = "mri"  # ignored: the layer carries its own operator settings
    widget.method.value = "fbp"
    _run_and_wait(qtbot, widget)
    mean = viewer.layers["phantom sinogram fbp mean"].data
    from recon.viewer.jobs import psnr

    assert psnr(mean, viewer.layers["phantom"].data) > 15


def test_mri_sample_is_kspace_with_its_operator(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "mri_kspace")
    kspace = layers[1]
    marker = kspace.metadata["diffrecon_measurement"]
    assert marker["operator"]["kind"] == "mri" and marker["measurement"].shape[0] == 2
    assert np.isfinite(kspace.data).all() and kspace.data.shape == layers[0].data.shape


# ----------------------------------------------------------------------------- recon view
def test_recon_view_opens_the_file(make_napari_viewer, tmp_path, monkeypatch):
    import napari
    import typer
    from typer.testing import CliRunner

    from recon.viewer import commands

    app = typer.Typer()
    app.command("noop")(lambda: None)  # typer needs two commands to keep "view" as a subcommand
    commands.register(app)
    viewer = make_napari_viewer()
    ran = []
    monkeypatch.setattr(napari, "Viewer", lambda **_: viewer)
    monkeypatch.setattr(napari, "run", lambda: ran.append(True))

    path = _saved_result(tmp_path / "slice.h5")
    out = CliRunner().invoke(app, ["view", str(path)])
    assert out.exit_code == 0, out.output
    assert ran == [True] and "slice uncertainty (std)" in viewer.layers and viewer.grid.enabled
    _assert_whole_layers_in_view(viewer)
    assert any("Reconstruct" in name for name in viewer.window.dock_widgets)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    out = CliRunner().invoke(app, ["view", str(foreign)])
    assert out.exit_code == 2 and "not a diffrecon result" in out.output


def test_removing_the_dock_mid_run_cancels_the_job(make_napari_viewer, qtbot):
    """napari takes a removed dock's widget out of its window without deleting it: the job ran on unseen and
    its result appeared later from nowhere."""
    viewer = make_napari_viewer()
    widget, worker, steps = _long_run_started(viewer, qtbot)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    assert widget.cancellation.requested and max(steps) < 200
    assert "phantom ccdf mean" not in viewer.layers
