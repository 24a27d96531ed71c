"""Dock widget: reconstruct the selected layer from the viewer, with live preview and cancel.

The widget only gathers choices and shows results; the job itself is the Qt-free generator
:func:`recon.viewer.jobs.reconstruction_steps`, run in napari's ``thread_worker`` so the window never
freezes. Each yielded step moves the progress bar in the activity dock and updates a preview layer;
Cancel (here or in the activity dock) stops the method within one step; on completion the ``mean``
and ``uncertainty (std)`` layers are added and shown side by side; any error is shown as a napari
notification, and in the status line cut to a few words (the whole message in its tooltip), so a long
message cannot widen the dock and squeeze the canvas.

torch and the models are not imported here: they load inside the worker on the first run.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

from recon.viewer import jobs
from recon.viewer.commands import show_side_by_side
from recon.viewer.reader import result_layers, robust_limits

logger = logging.getLogger(__name__)

PREVIEW_LAYER = "diffrecon preview"
OPERATOR_LABELS = (("CT (parallel beam)", "ct"), ("MRI (Cartesian)", "mri"), ("Super-resolution", "sr"))
PRIOR_AUTO = "auto (by operator)"
OPERATOR_FIELDS = {"ct": ("n_angles", "noise"), "mri": ("acceleration", "pattern", "noise"), "sr": ("factor", "noise")}
INPUT_KINDS = (("a measurement", "measurement"), ("an image to simulate from", "image"))
NO_GROUND_TRUTH = "(none)"
NOT_AN_INPUT = ("std", "initial", "samples")  # result layers that are no sensible default input
STATUS_CHARS = 80


def elide(text: str, limit: int = STATUS_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, so one line of status stays short."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _fit_label(label) -> None:
    """Let a label wrap and never ask for width: a long word in it would otherwise widen the dock."""
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    native.setMinimumWidth(0)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    native.setSizePolicy(policy)


def _fit_combo(combo, characters: int = 10) -> None:
    """Size a layer combo box for a few characters, not for its longest name (file names can be long)."""
    from qtpy.QtWidgets import QComboBox

    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(characters)


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

    A layer whose metadata carries ``diffrecon_measurement`` (the sample data's sinogram and k-space)
    is reconstructed as it is, with the operator settings it was made with. Any other layer is taken
    as a measurement of the chosen operator (a user's own sinogram, k-space or low-resolution image),
    unless it says it is a ground truth (``diffrecon_ground_truth`` in its metadata, or "ground
    truth"/"gt" in its name) or the user picks "simulate": then a measurement is simulated from it and
    the PSNR against it goes into the result's metadata. A measurement is scored against the
    "ground truth" layer when one is chosen; none is, unless a layer says it is one.
    """

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="input layer", choices=self._image_layer_names)
        self.input_kind = ComboBox(label="input is", choices=INPUT_KINDS, value="measurement")
        self.ground_truth = ComboBox(label="ground truth", choices=self._ground_truth_choices, value=NO_GROUND_TRUTH)
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
            self.layer, self.input_info, self.input_kind, self.ground_truth, self.operator, self.n_angles, self.noise,
            self.acceleration, self.pattern, self.factor, self.method, self.prior, self.steps, self.samples, self.seed,
            self.run_button, self.cancel_button, self.status,
        ])
        self.worker = None
        self._destroyed = False  # the dock or the viewer closed, or the dock was removed (see _closed)
        self._window_at_start = None  # the window the widget was in when its job started
        self.cancellation: Optional[jobs.Cancellation] = None
        self.last_result = None
        self._progress = None
        self._input_name = ""
        self._input_layer = None
        self._described_layer = None
        self._reference = None  # (name, image) a measurement's result is scored against
        self._ground_truth_picked = False  # the user chose the ground truth (or none) themselves
        self._setting_ground_truth = False
        self._shown_side_by_side = False
        for label in (self.input_info, self.status):
            _fit_label(label)
        for combo in (self.layer, self.ground_truth):
            _fit_combo(combo)
        self.operator.changed.connect(self._show_operator_fields)
        self.method.changed.connect(self._show_method_fields)
        self.layer.changed.connect(self._describe_layer)
        self.input_kind.changed.connect(self._describe_layer)
        self.ground_truth.changed.connect(self._on_ground_truth_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._refresh_layers)
        self.viewer.layers.events.renamed.connect(self._follow_rename)
        self.viewer.layers.selection.events.active.connect(self._follow_active_layer)
        self.native.destroyed.connect(self._on_destroyed)
        self._show_operator_fields()
        self._show_method_fields()
        self._follow_active_layer()

    # ------------------------------------------------------------------ layer choice
    def _image_layer_names(self, _widget=None) -> list:
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name != PREVIEW_LAYER]

    def _ground_truth_choices(self, _widget=None) -> list:
        return [NO_GROUND_TRUTH, *self._image_layer_names()]

    @staticmethod
    def is_input_candidate(layer) -> bool:
        """A layer the widget may pick by itself: shown, and not a result's std, initial or samples."""
        return (layer is not None and layer.visible and layer.name != PREVIEW_LAYER
                and layer.metadata.get("array") not in NOT_AN_INPUT)

    def default_input_layer(self) -> Optional[str]:
        """The layer a user most likely means: a shown measurement, then a shown image, then any layer.

        A shown image that says it is a ground truth comes after other shown images: with a phantom and
        its sinogram open, the sinogram is what there is to reconstruct.
        """
        layers = [self.viewer.layers[name] for name in self._image_layer_names()]
        candidates = [layer for layer in layers if self.is_input_candidate(layer)]
        ranked = ([layer for layer in candidates if jobs.MEASUREMENT_KEY in layer.metadata]
                  + [layer for layer in candidates if not jobs.is_ground_truth(layer.name, layer.metadata)]
                  + candidates + layers)
        return ranked[0].name if ranked else None

    def default_ground_truth(self) -> str:
        """The first layer that says it is a ground truth, else none."""
        for name in self._image_layer_names():
            layer = self.viewer.layers[name]
            if jobs.MEASUREMENT_KEY not in layer.metadata and jobs.is_ground_truth(name, layer.metadata):
                return name
        return NO_GROUND_TRUTH

    def _refresh_layers(self, _event=None) -> None:
        previous = self.layer.value
        self.layer.reset_choices()
        if self.layer.value is None or self.layer.value != previous:  # the chosen layer is gone
            default = self.default_input_layer()
            if default is not None:
                self.layer.value = default
        self._setting_ground_truth = True
        try:
            self.ground_truth.reset_choices()
            if not self._ground_truth_picked or self.ground_truth.value not in self.ground_truth.choices:
                self.ground_truth.value = self.default_ground_truth()
        finally:
            self._setting_ground_truth = False

    def _follow_rename(self, event) -> None:
        """A renamed layer stays chosen under its new name (the choice fell to another layer: the first)."""
        new = self.viewer.layers[event.index].name
        names = {layer.name for layer in self.viewer.layers}  # a pick no layer has now is the renamed one's
        picks = {combo: combo.value is not None and combo.value not in names and combo.value != NO_GROUND_TRUTH
                 for combo in (self.layer, self.ground_truth)}
        self._setting_ground_truth = True
        try:
            for combo, picked in picks.items():
                combo.reset_choices()
                if picked and new in combo.choices:
                    combo.value = new
        finally:
            self._setting_ground_truth = False
        self._refresh_layers()

    def _on_ground_truth_changed(self, _event=None) -> None:
        if not self._setting_ground_truth:
            self._ground_truth_picked = True

    def _follow_active_layer(self, _event=None) -> None:
        """Follow the layer selected in the layer list, unless it is no sensible input (hidden samples)."""
        self._refresh_layers()
        active = self.viewer.layers.selection.active
        if active is not None and active.name in self.layer.choices and self.is_input_candidate(active):
            self.layer.value = active.name
        elif not self.is_input_candidate(self._selected_layer()):
            default = self.default_input_layer()
            if default is not None:
                self.layer.value = default
        self._describe_layer()

    def _describe_layer(self, _event=None) -> None:
        layer = self._selected_layer()
        if layer is None:
            self.input_info.value = ""
            self._described_layer = None
            return
        marker = layer.metadata.get(jobs.MEASUREMENT_KEY)
        if layer.name != self._described_layer:  # a new input: its own default reading
            self._described_layer = layer.name
            simulate = marker is None and jobs.is_ground_truth(layer.name, layer.metadata)
            self.input_kind.value = "image" if simulate else "measurement"
        self.input_kind.enabled = marker is None
        if marker is not None:
            settings = marker["operator"]
            self.input_info.value = f"a {settings['kind']} measurement: its own operator settings are used"
            self.operator.value = settings["kind"]
            if self.input_kind.value != "measurement":
                self.input_kind.value = "measurement"
        elif self.input_kind.value == "image":
            self.input_info.value = "an image: a measurement is simulated from it and the result scored against it"
        else:
            self.input_info.value = "a measurement of the operator below (its size is read off the layer)"
        self.ground_truth.visible = self.input_kind.value == "measurement"

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
        """Steps at the method's default, shown only for methods that take steps; the prior only for
        methods that use one."""
        self.prior.visible = self.method.value in jobs.PRIOR_METHODS
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
        dims = self.viewer.dims
        last_two = (dims.ndim - 2, dims.ndim - 1)  # the world axes of the layer's last two (image) axes
        if dims.ndisplay != 2 or tuple(dims.displayed) != last_two:
            # the slice index below comes from the leading axes: another view would be another plane
            raise ValueError(f"layer {layer.name!r} is shown "
                             + ("in 3-D" if dims.ndisplay != 2 else "along other axes (rolled or transposed)")
                             + "; the widget reconstructs the (H, W) planes of its last two axes: switch to 2-D "
                             "display with the axes in their order (napari's 'reset axis order') to pick the slice")
        position = layer.world_to_data(dims.point)
        index = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position[: data.ndim - 2], data.shape[:-2]))
        return np.asarray(data[index])

    # ------------------------------------------------------------------ running
    def build_request(self) -> jobs.ReconstructionRequest:
        """The job for the current choices; raises ``ValueError`` for bad input, before any work."""
        layer = self._selected_layer()
        if layer is None:
            raise ValueError("select an image layer to reconstruct from (none is selected)")
        if getattr(layer, "rgb", False):
            raise ValueError(f"layer {layer.name!r} is RGB; expected a grayscale image")
        settings = jobs.OperatorSettings(
            kind=self.operator.value, n_angles=int(self.n_angles.value), noise=float(self.noise.value),
            acceleration=int(self.acceleration.value), pattern=self.pattern.value, factor=int(self.factor.value),
            seed=int(self.seed.value),
        )
        uses_prior = self.method.value in jobs.PRIOR_METHODS  # else the prior box is hidden: its value is no ask
        prior = None if self.prior.value == PRIOR_AUTO or not uses_prior else self.prior.value
        metadata = dict(layer.metadata)
        job = dict(method=self.method.value, prior=prior,
                   steps=int(self.steps.value) if jobs.default_steps(self.method.value) is not None else None,
                   n_samples=int(self.samples.value), seed=int(self.seed.value))
        if jobs.MEASUREMENT_KEY in metadata:
            return jobs.request_from_layer(layer.data, metadata, operator=settings, **job)
        if self.input_kind.value == "image":
            return jobs.ReconstructionRequest(image=self._plane(layer), operator=settings, **job)
        kspace = settings.kind == "mri" and layer.data.ndim == 3 and layer.data.shape[0] == 2
        data = np.asarray(layer.data) if kspace else self._plane(layer)
        return jobs.plain_measurement_request(data, settings, **job)

    def reference_image(self, request: jobs.ReconstructionRequest):
        """``(name, image)`` a measurement's result is scored against: the chosen ground truth, else ``None``.

        A simulated job is scored against its own input inside the job.
        """
        name = self.ground_truth.value
        if request.image is not None or name in (None, NO_GROUND_TRUTH) or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        if getattr(layer, "rgb", False):
            return None
        try:
            return name, self._plane(layer).astype(np.float32)
        except ValueError as err:  # a stack shown in 3-D or along other axes: no plane to score against
            logger.warning("no PSNR against %s: %s", name, err)
            return None

    def set_status(self, text: str) -> None:
        """Show ``text`` cut to one short line; the whole of it is in the tooltip."""
        self.status.value = elide(text)
        self.status.tooltip = str(text)

    def run(self) -> None:
        """Start a reconstruction of the selected layer (ignored while one is running)."""
        if self.worker is not None:
            return
        try:
            request = self.build_request()
        except (ValueError, TypeError, KeyError) as err:
            _notify_error(f"diffrecon: {err}")
            self.set_status(f"error: {err}")
            return
        self.start(request)

    def start(self, request: jobs.ReconstructionRequest):
        """Run ``request`` in a napari thread worker; returns the worker. One job at a time: a second start
        while one runs is refused (it could no longer be cancelled, and the first to end would re-enable *Run*)."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise RuntimeError("a reconstruction is running; cancel it or wait for it before starting another")
        self._input_layer = self.layer.value
        self._input_name = f"{self.layer.value} {request.method}"
        self._reference = self.reference_image(request)
        self._window_at_start = self._top_widget()
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
        self.set_status(f"running {request.method} ...")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop; it does so at its next step."""
        if self.cancellation is not None:
            self.cancellation.request()
        if self._closed():
            return
        if self.cancellation is not None:
            self.set_status("cancelling ...")
        self.cancel_button.enabled = False

    def _on_destroyed(self, *_) -> None:
        """The dock widget was closed: stop a running job and stop listening to the viewer. The job's signals
        still queued are then ignored (:meth:`_closed`): they would reach deleted Qt widgets. Once only: a
        removed dock's widget is destroyed later again."""
        if self.cancellation is not None:
            self.cancellation.request()
        if self._destroyed:
            return
        self._destroyed = True
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).disconnect(self._refresh_layers)
        self.viewer.layers.events.renamed.disconnect(self._follow_rename)
        self.viewer.layers.selection.events.active.disconnect(self._follow_active_layer)

    def _top_widget(self):
        """The outermost Qt widget holding this one: the viewer's window while docked (floating too)."""
        top = self.native
        while top.parentWidget() is not None:
            top = top.parentWidget()
        return top

    # ------------------------------------------------------------------ worker signals (GUI thread)
    def _closed(self) -> bool:
        """Whether the widget is gone (its dock or the viewer closed during a job): then the job's late
        signals touch nothing, and a job still running is asked to stop."""
        if not self._destroyed:
            try:  # the viewer closed: its Qt widgets are deleted, ours with them, maybe before `destroyed` came
                self.status.native.objectName()
            except RuntimeError:
                self._destroyed = True
        if not self._destroyed and self.worker is not None and self._top_widget() is not self._window_at_start:
            # the dock was removed (napari takes the widget out of its window, and Qt sends no `destroyed`)
            self._on_destroyed()
        if self._destroyed:
            if self.cancellation is not None:
                self.cancellation.request()
            return True
        return False

    def _on_progress(self, event: jobs.Progress) -> None:
        if self._closed():
            return
        if self._progress is not None:
            if self._progress.total != event.total:
                self._progress.total = event.total
            self._progress.n = min(event.step, event.total)
            self._progress.refresh()
        self.set_status(f"step {event.step} / {event.total}")
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
        if self._closed():
            return
        if result is None:
            self.set_status("cancelled")
            _notify_info("diffrecon: reconstruction cancelled")
            return
        self.last_result = result
        against, unscored = "the input", ""
        if self._reference is not None and result.metadata.get("psnr") is None:
            name, image = self._reference
            mean = np.squeeze(result.mean)
            if mean.shape == image.shape:
                result.metadata["psnr"] = jobs.psnr(mean, image)
                result.metadata["ground_truth_layer"] = against = name
            else:
                unscored = f" (no PSNR: ground truth {name!r} is {image.shape}, the result {mean.shape})"
        for data, kwargs, _ in result_layers(self._input_name, result.mean, result.std, metadata=result.metadata,
                                             include=("mean", "std")):
            self.viewer.add_image(data, **kwargs)
        if self._input_layer in self.layer.choices:  # adding layers made them active; keep the input
            self.layer.value = self._input_layer
        if not self._shown_side_by_side:  # the first result: mean and std side by side, all in view
            self._shown_side_by_side = True
            show_side_by_side(self.viewer)
        psnr = result.metadata.get("psnr")
        self.set_status("done" + (f": PSNR {psnr:.2f} dB against {against}" if psnr is not None else unscored))

    def _on_error(self, error: Exception) -> None:
        logger.error("reconstruction failed: %s", error, exc_info=error)
        if self._closed():
            return
        self.set_status(f"error: {error}")
        _notify_error(f"diffrecon: reconstruction failed: {type(error).__name__}: {error}")

    def _on_finished(self) -> None:
        if self._closed():
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            self.worker = None
            return
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
