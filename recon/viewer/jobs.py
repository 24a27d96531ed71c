"""The viewer's reconstruction job as a plain generator: no Qt, testable on its own.

The dock widget wraps :func:`reconstruction_steps` in napari's ``thread_worker`` (stardist-napari's
pattern); everything else lives here:

- :class:`OperatorSettings` and :class:`ReconstructionRequest` describe a job and validate it when
  built, so bad input is a ``ValueError`` in the GUI thread before any work starts;
- :func:`simulate_measurement` makes a measurement from an image (what the widget does with a plain
  image layer), :func:`build_operator` makes the operator for a given measurement;
- :func:`reconstruction_steps` runs :func:`recon.reconstruct_steps` (itself a generator of the
  method's steps) and yields each step as a :class:`Progress` event with a 2-D preview, in the
  consumer's thread: no second thread, no queue. A :class:`Cancellation` requested from any thread
  stops it at the next step, as does not asking for the next step.

torch, the operators and the priors are imported inside the functions that run the job, so importing
this module (and the widget) stays light.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generator, Optional

import numpy as np

from recon import geometry
from recon.methods.registry import METHOD_NAMES as METHODS, METHODS as METHOD_RECORDS, PRIOR_METHODS, check_prior_use
from recon.operator_kinds import DEFAULT_PRIORS, default_prior
from recon.progress import Cancelled, Step, Steps, relabel, run_steps

logger = logging.getLogger(__name__)

OPERATORS = ("ct", "mri", "sr")
PRIORS = tuple(DEFAULT_PRIORS.values())
from operators.masks import PATTERNS as MRI_PATTERNS  # noqa: E402 - the one list of mask patterns
SR_FACTORS = (2, 4, 8)  # operators.sr.FACTORS, written out so the widget loads without torch (a test compares them)
MEASUREMENT_KEY = "diffrecon_measurement"  # layer metadata key marking a measurement layer
GROUND_TRUTH_KEY = "diffrecon_ground_truth"  # layer metadata key marking a ground-truth image
MIN_SIDE = 16  # smaller images leave the priors' network (three halvings) too little to work on


def image_shape(size) -> tuple[int, int]:
    """``(H, W)`` from an int (a square image) or a pair, each side an integer of at least ``MIN_SIDE``."""
    try:
        pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        whole = (len(pair) == 2 and not any(isinstance(s, (bool, np.bool_)) for s in (size, *pair))
                 and all(float(s) == int(s) for s in pair))
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or min(int(s) for s in pair) < MIN_SIDE:
        raise ValueError(f"image_size must be an integer or (height, width), each at least {MIN_SIDE} pixels, "
                         f"got {size!r}")
    return tuple(int(s) for s in pair)


# ----------------------------------------------------------------------------- job description
@dataclass(frozen=True)
class OperatorSettings:
    """Which forward model, and its parameters.

    ``noise`` is the Gaussian measurement noise std as a fraction of the root mean square of the
    measured values (0.01 = 1 %), used when a measurement is simulated and passed on to the method.
    """

    kind: str = "ct"
    n_angles: int = 30
    noise: float = 0.0
    acceleration: int = 4
    pattern: str = "random"
    center_fraction: float = 0.08
    factor: int = 4
    seed: int = 0
    n_detectors: Optional[int] = None  # CT: None covers the whole image (ceil(sqrt(2) * size) bins)
    mask: Optional[tuple] = None  # MRI: the sampled columns (1/0 per column) of k-space given as it was measured

    def __post_init__(self):
        if self.kind not in OPERATORS:
            raise ValueError(f"operator must be one of {OPERATORS}, got {self.kind!r}")
        if not (isinstance(self.n_angles, (int, np.integer)) and self.n_angles >= 1):
            raise ValueError(f"CT views must be a positive integer, got {self.n_angles!r}")
        if self.n_detectors is not None and not (isinstance(self.n_detectors, (int, np.integer))
                                                 and self.n_detectors >= 1):
            raise ValueError(f"CT detectors must be a positive integer, got {self.n_detectors!r}")
        if not (0.0 <= float(self.noise) < 1.0):
            raise ValueError(f"noise must be a fraction in [0, 1), got {self.noise!r}")
        if not (isinstance(self.acceleration, (int, np.integer)) and self.acceleration >= 1):
            raise ValueError(f"MRI acceleration must be an integer >= 1, got {self.acceleration!r}")
        if self.pattern not in MRI_PATTERNS:
            raise ValueError(f"MRI pattern must be one of {MRI_PATTERNS}, got {self.pattern!r}")
        if not (0.0 < float(self.center_fraction) <= 1.0):
            raise ValueError(f"MRI center fraction must be in (0, 1], got {self.center_fraction!r}")
        if self.factor not in SR_FACTORS:
            raise ValueError(f"super-resolution factor must be one of {SR_FACTORS}, got {self.factor!r}")
        if self.mask is not None and not any(self.mask):
            raise ValueError("the MRI mask samples no column")

    def geometry(self, image_size):
        """The :mod:`recon.geometry` description of this operator for images of ``image_size`` ``(H, W)``."""
        image_size = image_shape(image_size)
        if self.kind == "ct":
            return geometry.ParallelBeamCT(image_size, n_angles=self.n_angles, n_detectors=self.n_detectors)
        if self.kind == "mri" and self.mask is not None:
            return geometry.CartesianMRI(image_size, mask=np.asarray(self.mask, dtype=np.float32))
        if self.kind == "mri":
            return geometry.CartesianMRI(image_size, acceleration=self.acceleration,
                                         center_fraction=self.center_fraction, pattern=self.pattern,
                                         mask_seed=self.seed)
        return geometry.SuperResolution(image_size, factor=self.factor)


@dataclass(frozen=True)
class ReconstructionRequest:
    """One job: either an ``image`` to simulate a measurement from, or a ``measurement``.

    ``image`` is a 2-D ``(H, W)`` array of any size from 16 pixels a side (the priors pad to their
    network's multiple of 8 and crop back; super-resolution needs sides divisible by its factor).
    ``measurement`` is the operator's measurement without batch axis (a CT sinogram
    ``(n_angles, n_detectors)``, MRI k-space ``(2, H, W)``, a low-resolution image) and then
    ``image_size`` (an int for a square image, or ``(H, W)``) must say how large the reconstruction is.
    """

    operator: OperatorSettings = field(default_factory=OperatorSettings)
    image: Optional[np.ndarray] = None
    measurement: Optional[np.ndarray] = None
    image_size: Optional[tuple] = None  # (H, W); an int is a square image
    method: str = "ccdf"
    prior: Optional[str] = None
    steps: Optional[int] = None  # None: the method's (registry.METHODS); only for methods with steps
    n_samples: int = 4
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.image is None) == (self.measurement is None):
            raise ValueError("give exactly one of an image (to simulate from) or a measurement")
        if self.image is not None:
            image = np.asarray(self.image)
            if image.ndim != 2:
                raise ValueError(f"expected a 2-D grayscale image (H, W), got an array of shape {image.shape}")
            if min(image.shape) < MIN_SIDE:
                raise ValueError(f"expected an image at least {MIN_SIDE} pixels a side, got {image.shape}; "
                                 "resize it first")
            check_real_numbers(image, "an image")
            if not np.all(np.isfinite(image)):
                raise ValueError("the image contains NaN or Inf values")
            object.__setattr__(self, "image", image.astype(np.float32))
            object.__setattr__(self, "image_size", tuple(int(s) for s in image.shape))
        else:
            measurement = np.asarray(check_real_numbers(self.measurement, "a measurement"), dtype=np.float32)
            if not np.all(np.isfinite(measurement)):
                raise ValueError("the measurement contains NaN or Inf values")
            if self.image_size is None:
                raise ValueError("a measurement needs image_size, the size of the image to reconstruct")
            object.__setattr__(self, "image_size", image_shape(self.image_size))
            object.__setattr__(self, "measurement", measurement)
        factor = self.operator.factor
        if self.operator.kind == "sr" and any(side % factor for side in self.image_size):
            raise ValueError(f"super-resolution by {factor} needs image sides divisible by {factor}, got "
                             f"{self.image_size}; crop the image first")
        guard_against_llvm_clash()  # the method options' checks import torch
        from recon.methods.arguments import check_method_options

        check_method_options(self.method, self.options, steps=self.steps)
        if not (isinstance(self.n_samples, (int, np.integer)) and self.n_samples >= 1):
            raise ValueError(f"samples must be an integer >= 1, got {self.n_samples!r}")
        check_prior_use(self.method, self.prior or None)
        if not self.prior and self.method in PRIOR_METHODS:
            object.__setattr__(self, "prior", default_prior(self.operator.kind))

    def describe(self) -> dict:
        """Settings as plain JSON-able values, stored in the result's metadata."""
        return {
            "operator": asdict(self.operator),
            "source": "simulated from image" if self.image is not None else "measurement",
            "image_size": list(self.image_size),
        }


@dataclass
class Progress:
    """One step of a running job: ``preview`` is the current estimate as a 2-D array (or ``None``)."""

    step: int
    total: int
    preview: Optional[np.ndarray] = None


class Cancellation:
    """A cancel flag the job checks at every step.

    :meth:`request` may be called from any thread; the next :meth:`check` raises
    :class:`~recon.progress.Cancelled`. ``requested_at_step`` and ``stopped_at_step`` record how far
    the method got, which is how the tests show that it stops within one step.
    """

    def __init__(self):
        self._event = threading.Event()
        self.last_step = 0
        self.requested_at_step: Optional[int] = None
        self.stopped_at_step: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        if not self._event.is_set():
            self.requested_at_step = self.last_step
            self._event.set()

    def check(self, step: int) -> None:
        if self._event.is_set():
            self.stopped_at_step = step
            raise Cancelled(f"cancelled at step {step}")
        self.last_step = step


def default_steps(method: str) -> Optional[int]:
    """The method's default number of steps, ``None`` for a method without steps (imports torch, guarded)."""
    guard_against_llvm_clash()
    record = METHOD_RECORDS[method]
    return record.defaults["steps"] if record.takes("steps") else None


# ----------------------------------------------------------------------------- physics
def guard_against_llvm_clash() -> bool:
    """Keep triton out of a process that already runs Mesa's OpenGL; returns whether it did.

    Why: napari draws with OpenGL; under Xvfb (or any Mesa software renderer) that maps Mesa's
    ``libLLVM``. torchvision imports ``torch._dynamo``, which imports triton, whose own bundled LLVM
    then segfaults the process when it loads next to Mesa's. torch treats a failing ``import triton``
    as "triton not installed", which costs nothing here (triton only serves ``torch.compile`` on GPUs).
    Call it before the first import of torch, deepinv or the operators; it does nothing when triton is
    already loaded or no ``libLLVM`` is mapped.
    """
    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as maps:
            mesa_llvm = any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no such clash known
        return False
    if mesa_llvm:
        logger.info("Mesa's LLVM is loaded (OpenGL); not importing triton, which would crash beside it")
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
    return mesa_llvm


def build_operator(settings: OperatorSettings, image_size):
    """The operator of ``settings`` for images of ``image_size`` (an int for a square, or ``(H, W)``)."""
    guard_against_llvm_clash()
    return settings.geometry(image_size).build()


def set_noise(physics, sigma: float) -> None:
    """Tell the method the measurement's noise std (deepinv's convention: ``physics.noise_model``)."""
    if sigma > 0:
        from deepinv.physics import GaussianNoise

        physics.noise_model = GaussianNoise(sigma=float(sigma))


def simulate_measurement(image: np.ndarray, settings: OperatorSettings):
    """Apply the operator to ``image`` and add the relative Gaussian noise of ``settings``.

    Returns ``(y, physics, sigma)``: ``y`` a batch-of-one tensor, ``sigma`` the absolute noise std
    added. The noise uses a generator seeded from ``settings.seed``: the same call, the same ``y``.
    """
    physics = build_operator(settings, image.shape[-2:])
    import torch

    image = np.asarray(image, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(image)).reshape(1, 1, *image.shape)
    with torch.no_grad():
        y = physics.A(x)
    measured = _measured_entries(physics, y)
    sigma = float(settings.noise) * float(y[measured].pow(2).mean().sqrt()) if measured.any() else 0.0
    if sigma > 0:
        generator = torch.Generator().manual_seed(int(settings.seed))
        y = y + sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype) * measured
    set_noise(physics, sigma)
    return y, physics, sigma


def _measured_entries(physics, y):
    """Boolean tensor like ``y``: where a value is measured (MRI: the sampled k-space; else all)."""
    import torch

    mask = getattr(physics, "mask", None)
    if mask is None:
        return torch.ones_like(y, dtype=torch.bool)
    return torch.broadcast_to(torch.as_tensor(mask, device=y.device) != 0, y.shape)


def measurement_display(y: np.ndarray, settings: OperatorSettings) -> np.ndarray:
    """What to show for a measurement: the sinogram itself, log |k-space|, the low-resolution image."""
    y = np.asarray(y, dtype=np.float32)
    if settings.kind == "mri":
        magnitude = np.sqrt(np.sum(y.reshape(2, -1, *y.shape[-2:]) ** 2, axis=0)).squeeze(0)
        return np.log1p(magnitude / (magnitude.max() or 1.0) * 1e3).astype(np.float32)
    return np.squeeze(y)


def measurement_metadata(y: np.ndarray, settings: OperatorSettings, image_size, noise_sigma: float = 0.0) -> dict:
    """Layer metadata that lets the widget reconstruct from a measurement layer.

    The raw measurement is kept here too (k-space is complex: the layer shows its log magnitude).
    """
    return {MEASUREMENT_KEY: {"operator": asdict(settings), "image_size": list(image_shape(image_size)),
                              "noise_sigma": float(noise_sigma), "measurement": np.asarray(y, dtype=np.float32)}}


def is_ground_truth(name: str, metadata: Optional[dict] = None) -> bool:
    """Whether a layer says it is a ground truth: its metadata marks it, or its name does.

    Only such a layer is simulated from or scored against by default; any other image may be a
    user's own measurement, and treating it as the truth would reconstruct the wrong thing.
    """
    if (metadata or {}).get(GROUND_TRUTH_KEY):
        return True
    if (metadata or {}).get("array") is not None or MEASUREMENT_KEY in (metadata or {}):
        return False  # a reconstruction ("ct gt fbp mean") or a measurement, whatever its name says
    words = re.sub(r"[_\-.]+", " ", str(name).lower()).split()
    return "gt" in words or "groundtruth" in words or "ground truth" in " ".join(words)


def ground_truth_metadata() -> dict:
    """Layer metadata that marks an image as the ground truth (the sample phantom and brain carry it)."""
    return {GROUND_TRUTH_KEY: True}


def check_real_numbers(data, what: str) -> np.ndarray:
    """``data`` as an array if it holds real numbers; a mask or labels layer (bool) or complex values are
    refused rather than read as 0/1 intensities or cut to their real part."""
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):  # bool is not a number here
        raise ValueError(f"expected {what} of real numbers, got dtype {array.dtype}"
                         + (" (a mask?)" if array.dtype == bool else "")
                         + ("; give k-space as (2, H, W), real and imaginary parts" if np.iscomplexobj(array) else ""))
    return array


def plain_measurement_request(data: np.ndarray, operator: OperatorSettings, **job) -> ReconstructionRequest:
    """A request for an unmarked layer that holds a measurement of ``operator``, sizes read off its shape.

    CT: a sinogram ``(n_angles, n_detectors)``; the image is square, the largest the detector covers
    whole (side ``floor(n_detectors / sqrt(2))``, the inverse of the operator's default detector
    count), the detector count is kept as given. Super-resolution: a low-resolution image, the reconstruction ``factor`` times
    larger. MRI: k-space as ``(2, H, W)``, real and imaginary parts (a magnitude image has lost
    the phase and cannot be reconstructed); where columns are empty it was undersampled when measured,
    and those columns are its mask (the widget's acceleration, pattern and seed make the mask of fully
    sampled k-space only).

    The widget's noise fraction becomes the method's noise std: that fraction of the root mean square of
    the measured values (as ``recon simulate`` adds it).
    """
    data = np.asarray(check_real_numbers(data, "a measurement layer"), dtype=np.float32)
    if operator.kind == "ct":
        if data.ndim != 2:
            raise ValueError(f"a CT sinogram layer must be 2-D (views, detectors), got shape {data.shape}")
        n_angles, n_detectors = (int(n) for n in data.shape)
        image_size = max(MIN_SIDE, math.floor(n_detectors / math.sqrt(2) + 1e-9))
        operator = replace(operator, n_angles=n_angles, n_detectors=n_detectors)
        measurement = data[None]
    elif operator.kind == "sr":
        if data.ndim != 2:
            raise ValueError(f"a low-resolution layer must be a 2-D image, got shape {data.shape}")
        image_size = tuple(int(s) * int(operator.factor) for s in data.shape)
        measurement = data[None]
    else:
        if data.ndim != 3 or data.shape[0] != 2:
            raise ValueError(f"an MRI k-space layer must be (2, H, W), real and imaginary parts; got shape {data.shape}")
        image_size = tuple(int(s) for s in data.shape[1:])
        measurement = data
        sampled = np.any(data != 0, axis=(0, 1))
        if not sampled.all():  # measured undersampled: its own columns, not a mask made up from the settings
            operator = replace(operator, mask=tuple(int(c) for c in sampled))
    options = dict(job.pop("options", None) or {})
    if operator.noise > 0 and "noise_sigma" not in options:
        measured = measurement[:, :, sampled] if operator.kind == "mri" else measurement
        options["noise_sigma"] = float(operator.noise) * float(np.sqrt(np.mean(measured.astype(np.float64) ** 2)))
    return ReconstructionRequest(measurement=measurement, image_size=image_size, operator=operator, options=options,
                                 **job)


def request_from_layer(data: np.ndarray, metadata: dict, **job) -> ReconstructionRequest:
    """Build a request from a layer: a measurement if its metadata says so, else an image to simulate from.

    ``job`` holds the widget's choices (``operator=OperatorSettings``, method, prior, steps, ...);
    a measurement layer's own operator settings replace the widget's.
    """
    marker = (metadata or {}).get(MEASUREMENT_KEY)
    if marker is None:
        return ReconstructionRequest(image=np.asarray(data), **job)
    settings = OperatorSettings(**marker["operator"])
    measurement = marker.get("measurement")
    if measurement is None:
        measurement = data
    elif not np.array_equal(np.asarray(data, dtype=np.float32), measurement_display(measurement, settings)):
        if settings.kind == "mri":  # the layer shows log |k-space|, which cannot be turned back into k-space
            logger.warning("the k-space layer's display differs from the k-space stored with it; the stored "
                           "k-space is reconstructed")
        elif np.size(data) != np.size(measurement):
            raise ValueError(f"the measurement layer holds {np.shape(data)} values, the measurement stored with it "
                             f"{np.shape(measurement)[-2:]}: its operator settings no longer fit it")
        else:  # a sinogram or low-resolution image shown as it is: what the user sees (and edited) is measured
            measurement = np.asarray(data, dtype=np.float32).reshape(np.shape(measurement))
    job = dict(job, operator=settings)
    options = dict(job.pop("options", {}) or {})
    if marker.get("noise_sigma"):
        options["noise_sigma"] = float(marker["noise_sigma"])
    return ReconstructionRequest(measurement=measurement, image_size=marker["image_size"], options=options, **job)


# ----------------------------------------------------------------------------- the job
def job_steps(request: ReconstructionRequest) -> Steps:
    """One job: the reconstruction's steps (``recon.progress.Step``), then its Result with the job's metadata."""
    guard_against_llvm_clash()
    import torch

    from recon import reconstruct_steps

    options = dict(request.options)
    noise_sigma = options.pop("noise_sigma", 0.0)
    if request.image is not None:
        y, physics, _ = simulate_measurement(request.image, request.operator)
    else:
        physics = build_operator(request.operator, request.image_size)
        set_noise(physics, noise_sigma)
        y = torch.from_numpy(np.ascontiguousarray(request.measurement))
        expected = tuple(physics.measurement_shape)
        if y.numel() != int(np.prod(expected)):
            raise ValueError(f"the measurement has shape {tuple(y.shape)}, the operator expects {expected}")
        y = y.reshape(1, *expected)  # a sinogram layer (A, D) is the operator's (1, A, D)
        physics.check_measurement(y)
    result = yield from reconstruct_steps(y, physics, method=request.method, prior=request.prior,
                                          n_samples=request.n_samples, steps=request.steps, seed=request.seed, **options)
    result.metadata["viewer_job"] = request.describe()
    result.metadata["operator_description"] = request.operator.geometry(request.image_size).to_dict()
    if request.image is not None:
        result.metadata["psnr"] = psnr(np.squeeze(result.mean), request.image)
    return result


def run_request(request: ReconstructionRequest, callback=None):
    """Run one job to its :class:`recon.result.Result`, blocking; ``callback(step, total, preview)`` per step."""
    return run_steps(job_steps(request), callback)


def psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB with the reference's dynamic range (how the viewer scores a simulated job)."""
    from recon.metrics import psnr as psnr_db

    return psnr_db(estimate, reference, data_range=None)


def preview_array(preview: Any) -> Optional[np.ndarray]:
    """A method's preview (tensor ``(K, C, H, W)`` in the prior's range) as one 2-D image."""
    if preview is None:
        return None
    if hasattr(preview, "detach"):
        preview = preview.detach().float().cpu().numpy()
    preview = np.asarray(preview, dtype=np.float32)
    while preview.ndim > 3:  # average the samples of the batch
        preview = preview.mean(axis=0)
    if preview.ndim == 3:
        preview = np.sqrt((preview**2).sum(axis=0)) if preview.shape[0] == 2 else preview.mean(axis=0)
    return np.ascontiguousarray(preview)


def reconstruction_steps(request: ReconstructionRequest, cancellation: Optional[Cancellation] = None
                         ) -> Generator[Progress, None, Optional[Any]]:
    """Run ``request``, yielding a :class:`Progress` per method step; return the Result.

    Everything runs in the consumer's thread (napari's ``thread_worker`` in the viewer). Returns
    ``None`` once ``cancellation`` is requested (at the next step); errors from the method are raised
    as they happen. Closing the generator stops the job.
    """
    cancellation = cancellation or Cancellation()

    def progress(done: Step) -> Progress:
        cancellation.check(done.step)  # raises Cancelled once cancellation is requested
        return Progress(done.step, done.total, preview_array(done.preview))

    steps = job_steps(request)
    try:
        return (yield from relabel(steps, progress))
    except Cancelled:
        logger.info("reconstruction cancelled at step %s", cancellation.stopped_at_step)
        return None
    finally:
        steps.close()
