"""X-ray CT forward models on astra-toolbox: parallel beam, fan beam (2D) and cone beam (3D).

Why our own wrapper rather than deepinv's ``TomographyWithAstra``: that one runs on CUDA only and
loops over the batch. Here CPU tensors go to ASTRA's CPU projectors (whose back-projection is the
exact transpose of the forward projection, so the adjoint is matched) and CUDA tensors to its CUDA
projectors, with the same sinogram layout ``(B, C, n_angles, n_detectors)`` on both.

Units: pixels have side ``pixel_size`` (default 1), so the sinogram holds line integrals of the
image values times length. With images in attenuation per unit length, the sinogram is the
dimensionless attenuation line integral ``-log(I / I0)`` (see :mod:`operators.noise`).
Angles are in radians.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch

from operators._astra import AstraCPUEngine, AstraCUDAEngine3D
from operators._checks import MAX_SIZE, as_image_size, as_positive_float, as_positive_int
from operators.base import ReconOperator
from operators.fbp_filters import canonical_filter, filter_sinogram

logger = logging.getLogger(__name__)

__all__ = ["ParallelBeamCT", "FanBeamCT", "ConeBeamCT"]


@functools.lru_cache(maxsize=1)
def astra_has_cuda() -> bool:
    """Whether the installed astra-toolbox was built with CUDA and sees a GPU."""
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # pragma: no cover - broken astra install
        return False


@functools.lru_cache(maxsize=1)
def _warn_cpu_fallback():
    logger.warning("CUDA tensor given but astra-toolbox has no CUDA support here: projecting on the CPU "
                   "and copying back (correct, but slow)")


class _XRayFunction(torch.autograd.Function):
    """Autograd wrapper: the gradient of a forward projection is a back-projection and vice versa."""

    @staticmethod
    def forward(ctx, t, op, mode):
        ctx.op, ctx.mode = op, mode
        return op._project(t, mode)

    @staticmethod
    def backward(ctx, grad):
        other = "BP" if ctx.mode == "FP" else "FP"
        return _XRayFunction.apply(grad.contiguous(), ctx.op, other), None, None


def _as_angles(angles, n_angles, full_circle: bool) -> np.ndarray:
    if angles is None:
        if n_angles is None:
            raise ValueError("give either angles (radians) or n_angles")
        n_angles = as_positive_int(n_angles, "n_angles")
        span = 2 * math.pi if full_circle else math.pi
        return np.linspace(0.0, span, n_angles, endpoint=False)
    arr = np.asarray(angles.detach().cpu() if isinstance(angles, torch.Tensor) else angles, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"angles must be a non-empty 1D array of finite radians, got shape {arr.shape}")
    if arr.size > MAX_SIZE:
        raise ValueError(f"angles: at most {MAX_SIZE} angles, got {arr.size}")
    if n_angles is not None and as_positive_int(n_angles, "n_angles") != arr.size:
        raise ValueError(f"n_angles={n_angles} does not match len(angles)={arr.size}")
    return arr


def angle_weights(angles: np.ndarray, period: float) -> np.ndarray:
    """Riemann-sum weight of each angle for FBP: half the gaps to its neighbours (modulo ``period``).

    Evenly spaced angles over the full period all get ``period / n``. Gaps wider than twice the
    median gap (a missing wedge in a limited-angle scan) count as the median gap only, so the
    angles at the edge of the wedge are not over-weighted.
    """
    n = angles.size
    if n == 1:
        return np.array([period / 2])
    order = np.argsort(np.mod(angles, period))
    sorted_angles = np.mod(angles, period)[order]
    gaps = np.diff(np.concatenate([sorted_angles, sorted_angles[:1] + period]))
    gaps = np.minimum(gaps, 2 * np.median(gaps))
    weights_sorted = (gaps + np.roll(gaps, 1)) / 2
    weights = np.empty(n)
    weights[order] = weights_sorted
    return weights


def _bins_to_cover(extent: float, spacing) -> int:
    """Detector bins of ``spacing`` that cover ``extent`` pixels; a bad spacing or a count beyond
    :data:`MAX_SIZE` is refused (a tiny spacing used to ask for billions of bins)."""
    bins = math.ceil(extent / as_positive_float(spacing, "detector_spacing"))
    if bins > MAX_SIZE:
        raise ValueError(f"detector_spacing {spacing!r} needs {bins} detector bins to cover the image "
                         f"(at most {MAX_SIZE}); give a larger spacing or n_detectors")
    return bins


class _CTOperator(ReconOperator):
    """Shared machinery of the 2D CT operators: projection dispatch, autograd, FBP."""

    projector_type: str = "linear"
    intensity_floor = 0.0  # linear attenuation: air is 0

    def __init__(self, image_size, angles_rad: np.ndarray, n_detectors: int, detector_spacing: float,
                 pixel_size: float, channels: int, filter: str, **kwargs):
        height, width = as_image_size(image_size)
        channels = as_positive_int(channels, "channels")
        n_detectors = as_positive_int(n_detectors, "n_detectors")
        pixel_size = as_positive_float(pixel_size, "pixel_size")
        detector_spacing = as_positive_float(detector_spacing, "detector_spacing")
        self.image_size = (height, width)
        self.angles = angles_rad
        self.n_angles = int(angles_rad.size)
        self.n_detectors = int(n_detectors)
        self.detector_spacing = float(detector_spacing)
        self.pixel_size = float(pixel_size)
        self.filter = canonical_filter(filter)
        super().__init__(
            img_shape=(int(channels), height, width),
            measurement_shape=(int(channels), self.n_angles, self.n_detectors),
            **kwargs,
        )
        proj_geom, vol_geom = self._astra_geometry_2d()
        self._cpu = AstraCPUEngine(proj_geom, vol_geom, self.projector_type)
        self._cuda = None  # (engine, flip_rows, flip_det), calibrated on first CUDA use

    # ------------------------------------------------------------------ geometry hooks
    def _astra_geometry_2d(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cuda_geometry(self, n_slices: int, angle_sign: float):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cuda_stacks_slices(self) -> bool:
        """True when one CUDA call can project a stack of independent slices (parallel beam)."""
        return False

    # ------------------------------------------------------------------ linear maps
    def A(self, x, **kwargs):
        """Forward projection ``(B, C, H, W) -> (B, C, n_angles, n_detectors)``."""
        self.check_image(x)
        return _XRayFunction.apply(x, self, "FP")

    def A_adjoint(self, y, **kwargs):
        """Back-projection, the exact transpose of :meth:`A` on the CPU."""
        self._check_adjoint_input(y)
        return _XRayFunction.apply(y, self, "BP")

    def check_measurement(self, y):
        """Raise ``ValueError`` for a wrong shape (naming an angle-count mismatch), NaN or Inf."""
        if isinstance(y, torch.Tensor) and y.ndim == 4 and y.shape[2] != self.n_angles:
            raise ValueError(
                f"{type(self).__name__}: sinogram has {y.shape[2]} angles but the geometry has "
                f"{self.n_angles}; expected shape (B, {self.img_shape[0]}, {self.n_angles}, {self.n_detectors}), "
                f"got {tuple(y.shape)}"
            )
        super().check_measurement(y)

    def _project(self, t: torch.Tensor, mode: str) -> torch.Tensor:
        batch, channels = t.shape[:2]
        out_tail = (self.n_angles, self.n_detectors) if mode == "FP" else self.image_size
        stack = t.reshape((batch * channels,) + tuple(t.shape[2:]))
        if t.is_cuda and astra_has_cuda():
            out = self._project_cuda(stack, mode)
        else:
            if t.is_cuda:
                _warn_cpu_fallback()
            arr = stack.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
            out = torch.from_numpy(self._cpu.run(arr, mode, out_tail))
        out = out.to(dtype=t.dtype, device=t.device).reshape((batch, channels) + tuple(out_tail))
        return out * self.pixel_size if self.pixel_size != 1.0 else out

    # ------------------------------------------------------------------ CUDA
    def _project_cuda(self, stack: torch.Tensor, mode: str) -> torch.Tensor:
        engine, flip_rows, flip_det = self._cuda_engine(stack.device)
        return self._run_cuda(engine, flip_rows, flip_det, stack, mode)

    def _run_cuda(self, engine, flip_rows, flip_det, stack, mode):
        height, width = self.image_size
        if mode == "BP" and flip_det:
            stack = stack.flip(-1)
        if mode == "FP" and flip_rows:
            stack = stack.flip(-2)
        if self._cuda_stacks_slices():
            n = stack.shape[0]
            shape = (n, self.n_angles, self.n_detectors) if mode == "FP" else (n, height, width)
            out = engine.run(stack, mode, shape, n)
        else:  # one slice per call: the geometry has a single detector row
            shape = (1, self.n_angles, self.n_detectors) if mode == "FP" else (1, height, width)
            out = torch.cat([engine.run(s[None], mode, shape, 1) for s in stack])
        if mode == "FP" and flip_det:
            out = out.flip(-1)
        if mode == "BP" and flip_rows:
            out = out.flip(-2)
        return out

    def _cuda_engine(self, device, engine_factory=AstraCUDAEngine3D):
        """Build the CUDA engine once, choosing the axis convention that reproduces the CPU projector.

        ASTRA's 2D (CPU) and 3D (CUDA) geometries differ in their y-axis and angle conventions; rather
        than hard-coding them, the first CUDA call projects a random slice both ways and keeps the
        orientation that matches (it also guards against future convention changes).
        """
        if self._cuda is not None:
            return self._cuda
        gen = torch.Generator().manual_seed(0)
        probe = torch.rand((1,) + self.image_size, generator=gen)
        reference = torch.from_numpy(self._cpu.run(probe.numpy(), "FP", (self.n_angles, self.n_detectors), allow_matrix=False))
        best = None
        for sign in (1.0, -1.0):
            engine = engine_factory(functools.partial(self._cuda_geometry, angle_sign=sign))
            for flip_rows in (False, True):
                for flip_det in (False, True):
                    out = self._run_cuda(engine, flip_rows, flip_det, probe.to(device), "FP").cpu()
                    err = float((out - reference).norm() / reference.norm())
                    if best is None or err < best[0]:
                        best = (err, engine, flip_rows, flip_det)
        err, engine, flip_rows, flip_det = best
        if err > 0.05:
            raise RuntimeError(f"{type(self).__name__}: no CUDA orientation matches the CPU projector (best rel. error {err:.3g})")
        logger.info("CUDA projector matches CPU to rel. error %.2e (flip_rows=%s, flip_det=%s)", err, flip_rows, flip_det)
        self._cuda = (engine, flip_rows, flip_det)
        return self._cuda

    # ------------------------------------------------------------------ inverses
    def A_dagger(self, y, filter: str | None = None, **kwargs):
        """Filtered back-projection (analytic, fast); ``filter`` overrides the operator's default.

        Filters: "ram-lak", "shepp-logan", "cosine", "hamming", "hann". For the iterative least-squares
        solution use :meth:`least_squares`.
        """
        self.check_measurement(y)
        name = self.filter if filter is None else canonical_filter(filter)
        return self._fbp(y, name)

    def _fbp(self, y, filter_name):  # pragma: no cover - abstract
        raise NotImplementedError

    def _angle_weights(self, y, period) -> torch.Tensor:
        """Per-angle FBP weights shaped to broadcast over ``(B, C, n_angles, n_detectors)``."""
        weights = torch.as_tensor(angle_weights(self.angles, period), dtype=y.dtype, device=y.device)
        return weights[:, None]

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, n_angles={self.n_angles}, n_detectors={self.n_detectors}, "
                f"filter={self.filter!r}")

    def __del__(self):
        for engine in (getattr(self, "_cpu", None), (getattr(self, "_cuda", None) or (None,))[0]):
            if engine is not None:
                engine.free()


def _parallel3d_geometry(n_slices, angle_sign, *, image_size, n_detectors, spacing, angles):
    import astra

    proj_geom = astra.create_proj_geom("parallel3d", spacing, 1.0, n_slices, n_detectors,
                                       angle_sign * np.asarray(angles))
    vol_geom = astra.create_vol_geom(image_size[0], image_size[1], n_slices)
    return proj_geom, vol_geom


def _fan3d_geometry(n_slices, angle_sign, *, image_size, n_detectors, spacing, angles, source, detector):
    import astra

    magnification = (source + detector) / source
    proj_geom = astra.create_proj_geom("cone", spacing, magnification, n_slices, n_detectors,
                                       angle_sign * np.asarray(angles), source, detector)
    vol_geom = astra.create_vol_geom(image_size[0], image_size[1], n_slices)
    return proj_geom, vol_geom


class ParallelBeamCT(_CTOperator):
    """2D parallel-beam CT on ASTRA (CPU and CUDA), differentiable, sinogram ``(B, C, n_angles, n_det)``.

    Parameters
    ----------
    image_size : int or (H, W)
        Image size in pixels.
    angles : array of float, optional
        Projection angles in radians. Default: ``n_angles`` angles evenly spaced over [0, pi).
    n_angles : int, optional
        Number of angles when ``angles`` is not given.
    n_detectors : int, optional
        Detector bins; default ``ceil(sqrt(2) * max(H, W))`` so the whole square image is seen.
    detector_spacing : float
        Bin width in pixels (default 1).
    pixel_size : float
        Pixel side length; scales the line integrals (default 1).
    channels : int
        Image channels, each projected independently (default 1).
    filter : str
        Default FBP filter of :meth:`A_dagger`.
    projector : str
        ASTRA CPU projector, "linear" (Joseph, default), "strip" or "line"; all have BP = FP^T.

    Examples
    --------
    >>> import torch
    >>> from operators import ParallelBeamCT
    >>> op = ParallelBeamCT(64, n_angles=90)
    >>> y = op.A(torch.rand(2, 1, 64, 64))
    >>> tuple(y.shape)
    (2, 1, 90, 91)
    >>> op.A_dagger(y).shape == (2, 1, 64, 64)
    True
    """

    def __init__(self, image_size, angles=None, n_angles=None, n_detectors=None, detector_spacing=1.0,
                 pixel_size=1.0, channels=1, filter="ram-lak", projector="linear", **kwargs):
        height, width = as_image_size(image_size)
        if angles is None and n_angles is None:
            n_angles = 180
        if projector not in ("linear", "strip", "line"):
            raise ValueError(f"projector must be 'linear', 'strip' or 'line', got {projector!r}")
        self.projector_type = projector
        if n_detectors is None:  # whole image in view; the spacing is checked first (NaN, 0)
            n_detectors = _bins_to_cover(math.sqrt(2) * max(height, width), detector_spacing)
        super().__init__((height, width), _as_angles(angles, n_angles, full_circle=False), n_detectors,
                         detector_spacing, pixel_size, channels, filter, **kwargs)

    def _astra_geometry_2d(self):
        import astra

        proj_geom = astra.create_proj_geom("parallel", self.detector_spacing, self.n_detectors, self.angles)
        vol_geom = astra.create_vol_geom(*self.image_size)
        return proj_geom, vol_geom

    def _cuda_stacks_slices(self) -> bool:
        return True

    def _cuda_geometry(self, n_slices, angle_sign):
        return _parallel3d_geometry(n_slices, angle_sign, image_size=self.image_size,
                                    n_detectors=self.n_detectors, spacing=self.detector_spacing,
                                    angles=tuple(self.angles))

    def _fbp(self, y, filter_name):
        # Riemann sum over [0, pi): each angle covers pi / n_angles; the filter response is 2|nu|.
        filtered = filter_sinogram(y, filter_name) / self.detector_spacing
        filtered = filtered * self._angle_weights(y, math.pi)
        scale = self.detector_spacing / (2 * self.pixel_size**2)
        return self.A_adjoint(filtered) * scale


class FanBeamCT(_CTOperator):
    """2D fan-beam CT with a flat detector on ASTRA (CPU "line_fanflat", CUDA cone with one row).

    Parameters
    ----------
    image_size : int or (H, W)
        Image size in pixels.
    n_angles : int, optional
        Source positions evenly spaced over [0, 2 pi) (default 360) unless ``angles`` is given; given
        with ``angles``, it must match their number.
    source_distance : float
        Source to rotation centre, in pixels (default ``2 * max(H, W)``).
    detector_distance : float
        Rotation centre to detector, in pixels (default ``max(H, W)``).
    n_detectors : int, optional
        Detector bins; default covers the image's circumscribed circle.
    detector_spacing : float, optional
        Bin width in pixels on the detector; default is the magnification, i.e. one pixel at the
        rotation centre.
    angles, pixel_size, channels, filter
        As in :class:`ParallelBeamCT`.

    Notes
    -----
    :meth:`A_dagger` is a weighted FBP for equispaced flat detectors (Kak & Slaney, ch. 3.4.2). The
    exact per-angle distance weight ``1/U^2`` cannot be applied inside ASTRA's back-projection, so it
    is replaced by its angular average per pixel; the result is accurate for full [0, 2 pi) scans.
    """

    projector_type = "line_fanflat"

    def __init__(self, image_size, n_angles=None, source_distance=None, detector_distance=None,
                 n_detectors=None, detector_spacing=None, angles=None, pixel_size=1.0, channels=1,
                 filter="ram-lak", **kwargs):
        height, width = as_image_size(image_size)
        size = max(height, width)
        source_distance = 2.0 * size if source_distance is None else as_positive_float(source_distance, "source_distance")
        detector_distance = (1.0 * size if detector_distance is None
                             else as_positive_float(detector_distance, "detector_distance", allow_zero=True))
        radius = math.sqrt(height**2 + width**2) / 2
        if not source_distance > radius:
            raise ValueError(f"source_distance must exceed the image radius {radius:.1f} pixels, got {source_distance}")
        self.source_distance = source_distance
        self.detector_distance = detector_distance
        self.magnification = (source_distance + detector_distance) / source_distance
        if detector_spacing is None:
            detector_spacing = self.magnification
        if n_detectors is None:
            half_fan = math.asin(radius / source_distance)
            n_detectors = _bins_to_cover(2 * (source_distance + detector_distance) * math.tan(half_fan),
                                         detector_spacing) + 2
        if angles is None and n_angles is None:
            n_angles = 360
        super().__init__((height, width), _as_angles(angles, n_angles, full_circle=True), n_detectors,
                         detector_spacing, pixel_size, channels, filter, **kwargs)
        self._distance_weight = None

    def _astra_geometry_2d(self):
        import astra

        proj_geom = astra.create_proj_geom("fanflat", self.detector_spacing, self.n_detectors, self.angles,
                                           self.source_distance, self.detector_distance)
        vol_geom = astra.create_vol_geom(*self.image_size)
        return proj_geom, vol_geom

    def _cuda_geometry(self, n_slices, angle_sign):
        return _fan3d_geometry(n_slices, angle_sign, image_size=self.image_size, n_detectors=self.n_detectors,
                               spacing=self.detector_spacing, angles=tuple(self.angles),
                               source=self.source_distance, detector=self.detector_distance)

    def _pixel_distance_weight(self) -> torch.Tensor:
        """Per-pixel mean over angles of ``1/U^2`` divided by the mean of ``1/U`` (see Notes)."""
        if self._distance_weight is None:
            # numpy, chunked over angles: computed once per operator, single-threaded on purpose
            height, width = self.image_size
            ys = (height - 1) / 2 - np.arange(height, dtype=np.float64)
            xs = np.arange(width, dtype=np.float64) - (width - 1) / 2
            py, px = np.meshgrid(ys, xs, indexing="ij")
            inv_u = np.zeros_like(px)
            inv_u2 = np.zeros_like(px)
            for chunk in np.array_split(self.angles, max(1, self.n_angles // 16)):
                ratio = self.source_distance / (
                    self.source_distance - px * np.sin(chunk)[:, None, None] + py * np.cos(chunk)[:, None, None])
                inv_u += ratio.sum(0)
                inv_u2 += (ratio**2).sum(0)
            self._distance_weight = torch.from_numpy(inv_u2 / inv_u)
        return self._distance_weight

    def _fbp(self, y, filter_name):
        # Rescale to a virtual detector through the rotation centre, cosine-weight, ramp-filter.
        spacing_iso = self.detector_spacing / self.magnification
        s = (torch.arange(self.n_detectors, dtype=torch.float64) - (self.n_detectors - 1) / 2) * spacing_iso
        cosine = self.source_distance / torch.sqrt(self.source_distance**2 + s**2)
        weighted = y * cosine.to(device=y.device, dtype=y.dtype)
        filtered = filter_sinogram(weighted, filter_name) / spacing_iso
        # Riemann sum over 2 pi (each ray seen twice: 1/2) with the 2|nu| filter response (1/2).
        filtered = filtered * self._angle_weights(y, 2 * math.pi)
        scale = spacing_iso / (4 * self.pixel_size**2)
        weight = self._pixel_distance_weight().to(device=y.device, dtype=y.dtype)
        return self.A_adjoint(filtered) * scale * weight


class ConeBeamCT(ReconOperator):
    """3D circular cone-beam CT on ASTRA's CUDA projectors (no CPU cone projector exists in ASTRA).

    Volumes are ``(B, C, D, H, W)``; projections ``(B, C, n_angles, det_rows, det_cols)``. Calling it
    on a CPU tensor raises a ``RuntimeError`` that says CUDA is required.

    Parameters
    ----------
    volume_size : int or (D, H, W)
        Volume size in voxels.
    n_angles : int, optional
        Source positions over [0, 2 pi) (default 360) unless ``angles`` is given; given with
        ``angles``, it must match their number.
    source_distance, detector_distance : float
        In voxels; defaults ``2 * max(size)`` and ``max(size)``.
    detector_shape : (rows, cols), optional
        Default covers the volume.
    """

    intensity_floor = 0.0  # linear attenuation: air is 0

    def __init__(self, volume_size, n_angles=None, source_distance=None, detector_distance=None,
                 detector_shape=None, detector_spacing=None, angles=None, channels=1, filter="ram-lak", **kwargs):
        depth, height, width = as_image_size(volume_size, "volume_size", ndim=3)
        channels = as_positive_int(channels, "channels")
        size = max(depth, height, width)
        self.volume_size = (depth, height, width)
        self.source_distance = 2.0 * size if source_distance is None else as_positive_float(source_distance, "source_distance")
        if not self.source_distance > math.sqrt(height**2 + width**2) / 2:
            raise ValueError(f"source_distance must exceed the volume's radius, got {source_distance}")
        self.detector_distance = (1.0 * size if detector_distance is None
                                  else as_positive_float(detector_distance, "detector_distance", allow_zero=True))
        self.magnification = (self.source_distance + self.detector_distance) / self.source_distance
        self.detector_spacing = (self.magnification if detector_spacing is None
                                 else as_positive_float(detector_spacing, "detector_spacing"))
        if detector_shape is None:
            radius = math.sqrt(height**2 + width**2) / 2
            extent = 2 * radius * self.source_distance / (self.source_distance - radius) * self.magnification
            rows = math.ceil((depth * self.source_distance / (self.source_distance - radius)) * self.magnification
                             / self.detector_spacing) + 2
            detector_shape = (rows, math.ceil(extent / self.detector_spacing) + 2)
        self.detector_shape = as_image_size(detector_shape, "detector_shape")
        if angles is None and n_angles is None:
            n_angles = 360
        self.angles = _as_angles(angles, n_angles, full_circle=True)
        self.n_angles = int(self.angles.size)
        self.filter = canonical_filter(filter)
        super().__init__(img_shape=(int(channels), depth, height, width),
                         measurement_shape=(int(channels), self.n_angles) + self.detector_shape, **kwargs)
        self._engine = AstraCUDAEngine3D(functools.partial(
            _cone_geometry, volume_size=self.volume_size, detector_shape=self.detector_shape,
            spacing=self.detector_spacing, angles=tuple(self.angles), source=self.source_distance,
            detector=self.detector_distance))

    def _require_cuda(self, t):
        if not t.is_cuda:
            raise RuntimeError(
                "ConeBeamCT requires CUDA: astra-toolbox has no CPU cone-beam projector. "
                "Move the volume/projections to a CUDA device (tensor.cuda())."
            )
        if not astra_has_cuda():
            raise RuntimeError("ConeBeamCT requires CUDA, but the installed astra-toolbox has no CUDA support "
                               "(astra.use_cuda() is False); install a CUDA build of astra-toolbox")

    def _project(self, t, mode):
        self._require_cuda(t)
        batch, channels = t.shape[:2]
        rows, cols = self.detector_shape
        outs = []
        for vol in t.reshape((batch * channels,) + tuple(t.shape[2:])):
            if mode == "FP":
                out = self._engine.run(vol, "FP", (rows, self.n_angles, cols), 1).permute(1, 0, 2)
            else:
                out = self._engine.run(vol.permute(1, 0, 2), "BP", self.volume_size, 1)
            outs.append(out)
        out = torch.stack(outs).to(t.dtype)
        return out.reshape((batch, channels) + tuple(out.shape[1:]))

    def A(self, x, **kwargs):
        self.check_image(x)
        self._require_cuda(x)
        return _XRayFunction.apply(x, self, "FP")

    def A_adjoint(self, y, **kwargs):
        self._check_adjoint_input(y)
        self._require_cuda(y)
        return _XRayFunction.apply(y, self, "BP")

    def A_dagger(self, y, filter=None, **kwargs):
        """FDK-style reconstruction: cosine weights, row-wise ramp filter, back-projection."""
        self.check_measurement(y)
        self._require_cuda(y)
        name = self.filter if filter is None else canonical_filter(filter)
        spacing_iso = self.detector_spacing / self.magnification
        rows, cols = self.detector_shape
        v = (torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2) * spacing_iso
        u = (torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2) * spacing_iso
        d = self.source_distance
        cosine = d / torch.sqrt(d**2 + v[:, None] ** 2 + u[None, :] ** 2)
        filtered = filter_sinogram(y * cosine.to(y), name) / spacing_iso
        return self.A_adjoint(filtered) * (math.pi / (2 * self.n_angles) * spacing_iso)

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.free()


def _cone_geometry(n_slices, *, volume_size, detector_shape, spacing, angles, source, detector):
    import astra

    proj_geom = astra.create_proj_geom("cone", spacing, spacing, detector_shape[0], detector_shape[1],
                                       np.asarray(angles), source, detector)
    vol_geom = astra.create_vol_geom(volume_size[1], volume_size[2], volume_size[0])
    return proj_geom, vol_geom
