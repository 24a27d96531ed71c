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
    viewer.add_image(truth, name="phantom")
    widget = _dock_widget(viewer)
    assert widget.layer.value == "phantom"

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


@pytest.mark.parametrize("route", ["widget button", "activity dock"])
def test_cancel_stops_mid_run(make_napari_viewer, qtbot, route):
    viewer = make_napari_viewer()
    viewer.add_image(_phantom(32), name="phantom")
    widget = _dock_widget(viewer)
    widget.method.value, widget.prior.value, widget.steps.value, widget.samples.value = "ccdf", "ct", 200, 1
    widget.run()
    worker = widget.worker
    steps = []
    worker.yielded.connect(lambda event: steps.append(event.step))
    qtbot.waitUntil(lambda: len(steps) > 0, timeout=WAIT_MS)
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


def test_bad_input_is_reported_in_the_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 44), dtype=np.float32), name="odd")
    widget = _dock_widget(viewer)
    widget.layer.value = "odd"
    widget.run()  # rejected before any work: no worker, an error notification
    assert widget.worker is None
    assert any("square image" in m for m in _error_messages())

    viewer.add_image(_phantom(32), name="phantom")
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
    viewer.dims.set_current_step(0, 2)
    request = widget.build_request()
    np.testing.assert_array_equal(request.image, stack[2])
    rgb = viewer.add_image(np.zeros((32, 32, 3), dtype=np.uint8), name="rgb", rgb=True)
    widget.layer.value = rgb.name
    with pytest.raises(ValueError, match="RGB"):
        widget.build_request()


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
    assert any("Reconstruct" in name for name in viewer.window.dock_widgets)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    out = CliRunner().invoke(app, ["view", str(foreign)])
    assert out.exit_code == 2 and "not a diffrecon result" in out.output
