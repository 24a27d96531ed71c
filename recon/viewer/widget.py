"""Dock widget: reconstruct the selected layer from the viewer, with live preview and cancel.

The widget only gathers choices and shows results; the job itself is the Qt-free generator
:func:`recon.viewer.jobs.reconstruction_steps`, run in napari's ``thread_worker`` so the window never
freezes. Each yielded step moves the progress bar in the activity dock and updates a preview layer;
Cancel (here or in the activity dock) stops the method within one step; on completion the ``mean``
and ``uncertainty (std)`` layers are added; any error is shown as a napari notification.

torch and the models are not imported here: they load inside the worker on the first run.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

from recon.viewer import jobs
from recon.viewer.reader import result_layers, robust_limits

logger = logging.getLogger(__name__)

PREVIEW_LAYER = "diffrecon preview"
OPERATOR_LABELS = (("CT (parallel beam)", "ct"), ("MRI (Cartesian)", "mri"), ("Super-resolution", "sr"))
PRIOR_AUTO = "auto (by operator)"
OPERATOR_FIELDS = {"ct": ("n_angles", "noise"), "mri": ("acceleration", "pattern", "noise"), "sr": ("factor", "noise")}


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _activity_progress(desc: str, on_cancel):
    """A progress bar in napari's activity dock whose Cancel button calls ``on_cancel`` at once.

    napari's ``cancelable_progress`` only runs its callback when it wraps an iterable; here the job
    reports steps itself, so the button has to call back directly.
    """
    from napari.utils import cancelable_progress

    class _JobProgress(cancelable_progress):
        def cancel(self) -> None:
            super().cancel()
            if self.cancel_callback is not None:
                self.cancel_callback()

    return _JobProgress(total=0, desc=desc, cancel_callback=on_cancel)


def _notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class ReconstructWidget(Container):
    """Pick operator, method, prior, steps and samples; run on the selected image layer.

    A plain image layer is the ground truth a measurement is simulated from (the PSNR of the result
    against it goes into the layer metadata). A layer whose metadata carries
    ``diffrecon_measurement`` (the sample data's sinogram and k-space) is reconstructed as it is,
    with the operator settings it was made with.
    """

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="input layer", choices=self._image_layer_names)
        self.operator = ComboBox(label="operator", choices=OPERATOR_LABELS, value="ct")
        self.n_angles = SpinBox(label="CT views", min=1, max=2000, value=30)
        self.noise = FloatSpinBox(label="noise (fraction)", min=0.0, max=0.5, step=0.005, value=0.0)
        self.acceleration = SpinBox(label="MRI acceleration", min=1, max=32, value=4)
        self.pattern = ComboBox(label="MRI pattern", choices=jobs.MRI_PATTERNS, value="random")
        self.factor = ComboBox(label="SR factor", choices=jobs.SR_FACTORS, value=4)
        self.method = ComboBox(label="method", choices=jobs.METHODS, value="ccdf")
        self.prior = ComboBox(label="prior", choices=(PRIOR_AUTO, *jobs.PRIORS), value=PRIOR_AUTO)
        self.steps = SpinBox(label="steps", min=1, max=2000, value=jobs.default_steps("ccdf"))
        self.samples = SpinBox(label="samples", min=1, max=256, value=4)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.run_button = PushButton(text="Reconstruct")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.input_info = Label(value="")
        self.status = Label(value="")
        super().__init__(widgets=[
            self.layer, self.input_info, self.operator, self.n_angles, self.noise, self.acceleration, self.pattern, self.factor,
            self.method, self.prior, self.steps, self.samples, self.seed, self.run_button, self.cancel_button,
            self.status,
        ])
        self.worker = None
        self.cancellation: Optional[jobs.Cancellation] = None
        self.last_result = None
        self._progress = None
        self._input_name = ""
        self._input_layer = None
        self.operator.changed.connect(self._show_operator_fields)
        self.method.changed.connect(self._show_method_fields)
        self.layer.changed.connect(self._describe_layer)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_active_layer)
        self.native.destroyed.connect(self._on_destroyed)
        self._show_operator_fields()
        self._show_method_fields()
        self._follow_active_layer()

    # ------------------------------------------------------------------ layer choice
    def _image_layer_names(self, _widget=None) -> list:
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name != PREVIEW_LAYER]

    def _refresh_layers(self, _event=None) -> None:
        self.layer.reset_choices()

    def _follow_active_layer(self, _event=None) -> None:
        self._refresh_layers()
        active = self.viewer.layers.selection.active
        if active is not None and active.name in self.layer.choices:
            self.layer.value = active.name
        self._describe_layer()

    def _describe_layer(self, _event=None) -> None:
        marker = self._selected_metadata().get(jobs.MEASUREMENT_KEY)
        if marker is None:
            self.input_info.value = "an image: a measurement is simulated from it" if self.layer.value else ""
        else:
            settings = marker["operator"]
            self.input_info.value = f"a {settings['kind']} measurement: its own operator settings are used"
            self.operator.value = settings["kind"]

    def _selected_layer(self):
        name = self.layer.value
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _selected_metadata(self) -> dict:
        layer = self._selected_layer()
        return dict(layer.metadata) if layer is not None else {}

    def _show_operator_fields(self, _event=None) -> None:
        shown = OPERATOR_FIELDS[self.operator.value]
        for name in ("n_angles", "noise", "acceleration", "pattern", "factor"):
            getattr(self, name).visible = name in shown

    def _show_method_fields(self, _event=None) -> None:
        """Steps at the method's default, shown only for methods that take steps."""
        steps = jobs.default_steps(self.method.value)
        self.steps.visible = steps is not None
        if steps is not None:
            self.steps.value = steps

    def _plane(self, layer) -> np.ndarray:
        """The 2-D plane of ``layer`` the viewer shows now (the current slice of a stack)."""
        data = layer.data
        if getattr(layer, "rgb", False):
            raise ValueError(f"layer {layer.name!r} is RGB; expected a grayscale image")
        if data.ndim <= 2:
            return np.asarray(data)
        position = layer.world_to_data(self.viewer.dims.point)
        index = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position[: data.ndim - 2], data.shape[:-2]))
        return np.asarray(data[index])

    # ------------------------------------------------------------------ running
    def build_request(self) -> jobs.ReconstructionRequest:
        """The job for the current choices; raises ``ValueError`` for bad input, before any work."""
        layer = self._selected_layer()
        if layer is None:
            raise ValueError("select an image layer to reconstruct from (none is selected)")
        settings = jobs.OperatorSettings(
            kind=self.operator.value, n_angles=int(self.n_angles.value), noise=float(self.noise.value),
            acceleration=int(self.acceleration.value), pattern=self.pattern.value, factor=int(self.factor.value),
            seed=int(self.seed.value),
        )
        prior = None if self.prior.value == PRIOR_AUTO else self.prior.value
        metadata = dict(layer.metadata)
        data = layer.data if jobs.MEASUREMENT_KEY in metadata else self._plane(layer)
        return jobs.request_from_layer(
            data, metadata, operator=settings, method=self.method.value, prior=prior,
            steps=int(self.steps.value) if jobs.default_steps(self.method.value) is not None else None,
            n_samples=int(self.samples.value), seed=int(self.seed.value),
        )

    def run(self) -> None:
        """Start a reconstruction of the selected layer (ignored while one is running)."""
        if self.worker is not None:
            return
        try:
            request = self.build_request()
        except (ValueError, TypeError, KeyError) as err:
            _notify_error(f"diffrecon: {err}")
            self.status.value = f"error: {err}"
            return
        self.start(request)

    def start(self, request: jobs.ReconstructionRequest):
        """Run ``request`` in a napari thread worker; returns the worker."""
        from napari.qt.threading import create_worker

        self._input_layer = self.layer.value
        self._input_name = f"{self.layer.value} {request.method}"
        self.cancellation = jobs.Cancellation()
        self._progress = _activity_progress(f"diffrecon {request.method}", self.cancel)
        worker = create_worker(jobs.reconstruction_steps, request, self.cancellation, _start_thread=False,
                               _ignore_errors=True)  # _on_error shows them; napari would raise them again
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self.cancel)  # cancelled from the activity dock's own button
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"running {request.method} ..."
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop; it does so at its next step."""
        if self.cancellation is not None:
            self.cancellation.request()
            self.status.value = "cancelling ..."
        self.cancel_button.enabled = False

    def _on_destroyed(self, *_) -> None:
        """The dock widget was closed: stop a running job and stop listening to the viewer."""
        if self.cancellation is not None:
            self.cancellation.request()
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).disconnect(self._refresh_layers)
        self.viewer.layers.selection.events.active.disconnect(self._follow_active_layer)

    # ------------------------------------------------------------------ worker signals (GUI thread)
    def _on_progress(self, event: jobs.Progress) -> None:
        if self._progress is not None:
            if self._progress.total != event.total:
                self._progress.total = event.total
            self._progress.n = min(event.step, event.total)
            self._progress.refresh()
        self.status.value = f"step {event.step} / {event.total}"
        if event.preview is None:
            return
        limits = robust_limits(event.preview)
        if PREVIEW_LAYER in self.viewer.layers:
            layer = self.viewer.layers[PREVIEW_LAYER]
            layer.data = event.preview
            layer.contrast_limits = limits
        else:
            self.viewer.add_image(event.preview, name=PREVIEW_LAYER, colormap="gray", contrast_limits=limits)

    def _on_returned(self, result) -> None:
        if result is None:
            self.status.value = "cancelled"
            _notify_info("diffrecon: reconstruction cancelled")
            return
        self.last_result = result
        for data, kwargs, _ in result_layers(self._input_name, result.mean, result.std, metadata=result.metadata,
                                             include=("mean", "std")):
            self.viewer.add_image(data, **kwargs)
        if self._input_layer in self.layer.choices:  # adding layers made them active; keep the input
            self.layer.value = self._input_layer
        psnr = result.metadata.get("psnr")
        self.status.value = "done" + (f": PSNR {psnr:.2f} dB against the input" if psnr is not None else "")

    def _on_error(self, error: Exception) -> None:
        logger.error("reconstruction failed: %s", error, exc_info=error)
        self.status.value = f"error: {error}"
        _notify_error(f"diffrecon: reconstruction failed: {type(error).__name__}: {error}")

    def _on_finished(self) -> None:
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
