"""Data consistency: the one step every method takes to move an image towards the measurement.

Given an image estimate ``z`` (the denoised estimate of a sampler, or an optimiser's iterate) and the
measurement ``y``, return an image that agrees better with ``A x = y`` without moving further than
needed (non-expansive):

* the operator's closed form ``physics.project(x, y, noise_sigma)`` when it has one (MRI: hard k-space
  replacement when noiseless, relaxed replacement otherwise; super-resolution: back-projection);
* otherwise (CT, and any deepinv operator) a few conjugate-gradient iterations, started at ``z``, on
  the proximal problem::

      argmin_x  ||A x - y||^2 / (2 noise_sigma^2)  +  ||x - z||^2 / (2 sigma^2)

  where ``sigma`` is the current diffusion noise level, used as the uncertainty of ``z``. Noiseless
  (``noise_sigma = 0``) it becomes early-stopped least squares from ``z`` (as in DDS, Chung et al.
  2023): the few iterations are what keep the step close to ``z`` in the null space of ``A``.

Large parallel-beam CT on the CPU (LoDoPaB-CT's 1000 views x 513 bins: about 1 s per projection) is
operator-bound: 5 iterations cost 6 forward and 6 back-projections per step. There ``A^T A`` is close
to a convolution (for a full-width detector, every ray through two pixels is measured, whatever
their position), so the CG iterations use that convolution, one FFT product (:class:`FFTNormal`).
The right-hand side ``A^T (y - A z) = A^T y - N z - c`` splits into ``A^T y`` (back-projected once),
the FFT product ``N z`` and the surrogate's error ``c = (A^T A - N) z``, computed with the projector
for the mean of the K samples every ``refresh`` steps and shared by them until the next: ``c`` is a
few per cent of ``A^T A z`` and changes slowly with ``z``, so what is dropped is the surrogate's error
on the samples' differences and on a few steps' change, while dropping ``c`` altogether moves the
fixed point (docs/speed.md). Two projections every ``refresh`` steps for all K samples, instead of 12
per sample and step with the exact CG.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)


def cg_proximal_step(physics, z: torch.Tensor, y: torch.Tensor, damping: float, iterations: int,
                     normal=None, rhs=None) -> torch.Tensor:
    """``z + d`` with ``d`` from ``iterations`` CG steps on ``(A^T A + damping I) d = A^T (y - A z)``.

    ``damping = noise_sigma^2 / sigma^2``; 0 gives early-stopped least squares started at ``z``.
    Each batch element gets its own step lengths (the operators' batched CG), so K samples in one batch
    stay independent. ``normal(d)``, when given, stands in for ``A^T A d`` inside the iterations;
    ``rhs``, when given, for ``A^T (y - A z)`` (by default computed with the operator).
    """
    from operators._linalg import conjugate_gradient

    if normal is None:
        normal = lambda d: physics.A_adjoint(physics.A(d))  # noqa: E731
    if rhs is None:
        rhs = physics.A_adjoint(y - physics.A(z))
    step = conjugate_gradient(lambda d: normal(d) + damping * d, rhs, max_iter=iterations, tol=1e-6)
    return z + step


class FFTNormal:
    """``A^T A`` of a parallel-beam CT operator as a convolution, applied by FFT.

    The kernel is ``A^T A`` of one pixel, computed once with the same angles, bin width and pixel size
    on a grid about twice as large (so every lag of the image is in it), with the same parities as the
    image and the detector, so the pixel sits where the image's pixels sit relative to the bins. What
    remains is the projector's dependence on where a pixel lies between bins, averaged over the views:
    a 2 to 3 % relative error on CT images at LoDoPaB-CT's geometry (12 % on white noise), against a
    100-fold cheaper product.
    """

    def __init__(self, physics):
        from operators.ct import ParallelBeamCT

        height, width = physics.image_size
        big = (2 * height - height % 2, 2 * width - width % 2)
        spacing = physics.detector_spacing
        bins = math.ceil(math.hypot(*big) / spacing) + 2
        bins += (bins - physics.n_detectors) % 2
        wide = ParallelBeamCT(big, angles=physics.angles, n_detectors=bins, detector_spacing=spacing,
                              pixel_size=physics.pixel_size, projector=physics.projector_type)
        centre = (big[0] // 2, big[1] // 2)
        delta = torch.zeros((1, 1) + big)
        delta[0, 0, centre[0], centre[1]] = 1.0
        with torch.no_grad():
            kernel = wide.A_adjoint(wide.A(delta))[0, 0].double()
        kernel = torch.roll(kernel, shifts=(-centre[0], -centre[1]), dims=(0, 1))
        self.image_size = (height, width)
        self.grid = big
        self.spectrum = torch.fft.rfft2(kernel)  # real and even up to rounding
        self._spectra = {}  # the spectrum in each (dtype, device) it is used in

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``: zero-padded FFT product in ``x``'s precision (float32 rounding is far below the
        surrogate's 2-3 % error), only the image's rows transformed back along the first axis."""
        height, width = self.image_size
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (real, x.device)
        if key not in self._spectra:
            self._spectra[key] = self.spectrum.to(device=x.device, dtype=torch.complex128 if real == torch.float64
                                                  else torch.complex64)
        product = torch.fft.rfft2(x.to(real), s=self.grid) * self._spectra[key]
        rows = torch.fft.ifft(product, dim=-2)[..., :height, :]
        return torch.fft.irfft(rows, n=self.grid[1], dim=-1)[..., :width].to(x.dtype)


#: Kernels by geometry, so that the slices of a batch (each with its own operator object) share one;
#: a few are kept (4 MB each at LoDoPaB-CT's size).
_FFT_NORMALS: "OrderedDict[tuple, FFTNormal]" = OrderedDict()
_FFT_NORMALS_KEPT = 4


#: ``normal`` of :class:`DataConsistency` when it is not given (``recon.reconstruct`` does not pass one).
DEFAULT_NORMAL = "auto"
#: ``refresh`` of :class:`DataConsistency` when it is not given.
DEFAULT_REFRESH = 4


def _parallel_beam(physics):
    """``(ct, share)``: the parallel-beam operator behind ``physics`` and the share of its data kept.

    The self-validation run measures 7/8 of the sinogram entries (``operators.base.RestrictedOperator``); at
    random entries, ``A^T diag(keep) A`` is close to ``share * A^T A``.
    """
    from operators.base import RestrictedOperator
    from operators.ct import ParallelBeamCT

    if type(physics) is ParallelBeamCT:
        return physics, 1.0
    if type(physics) is RestrictedOperator and type(physics.physics) is ParallelBeamCT:
        return physics.physics, float(physics.keep.float().mean())
    return None, 0.0


def fft_normal_applies(physics) -> bool:
    """Whether ``physics`` is parallel-beam CT with a detector covering the image's inscribed disc."""
    ct, _ = _parallel_beam(physics)
    return ct is not None and ct.n_detectors * ct.detector_spacing >= max(ct.image_size) - 1e-6


def _dense_and_costly(physics) -> bool:
    """At least as many views as image columns, and no explicit matrix: where "auto" takes the FFT.

    Sparse views leave ``A^T A`` further from a convolution (the CG step differs by 25-30 % at 30
    views, 128 or 256 px, against 3 % at LoDoPaB-CT's 1000 views of 360 px); small problems project
    through the sparse matrix, which is cheap, and keep their exact results.
    """
    ct, _ = _parallel_beam(physics)
    engine = getattr(ct, "_cpu", None)
    return engine is not None and ct.n_angles >= max(ct.image_size) and not engine.uses_matrix()


def fft_normal(physics):
    """``A^T A`` as an FFT product for ``physics`` (:class:`FFTNormal`), built once per geometry."""
    ct, share = _parallel_beam(physics)
    key = (tuple(ct.image_size), ct.angles.tobytes(), ct.n_detectors, ct.detector_spacing, ct.pixel_size, ct.projector_type)
    normal = _FFT_NORMALS.pop(key, None) or FFTNormal(ct)
    _FFT_NORMALS[key] = normal
    while len(_FFT_NORMALS) > _FFT_NORMALS_KEPT:
        _FFT_NORMALS.popitem(last=False)
    return normal if share == 1.0 else (lambda x: share * normal(x))


def closed_form(physics, use_project: bool = True) -> bool:
    """Whether data consistency is an exact projection onto the measured data (MRI, SR), not CG steps (CT)."""
    return bool(use_project) and bool(getattr(physics, "exact_projection", False))


def step_kind(exact: bool) -> str:
    """``"projection"`` for an exact projection (:func:`closed_form`), else ``"cg"``: the one name of the
    data-consistency step that the settings chosen by it (steering's defaults, the batch's training
    slices) are keyed by."""
    return "projection" if exact else "cg"


class DataConsistency:
    """Callable ``dc(z, sigma) -> x``: one data-consistency step for the measurement ``y``.

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        The forward operator; its ``project`` is used when present (and ``use_project`` is true).
    y : torch.Tensor
        The measurement, batch of one; it is broadcast against the K samples.
    noise_sigma : float
        Measurement noise std in the (mapped) measurement units; 0 for noiseless data.
    cg_iterations : int
        CG iterations of the proximal step where no closed form exists.
    normal : "auto", "exact" or "fft", optional
        ``A^T A`` inside the CG iterations: "exact" the operator's, "fft" :class:`FFTNormal`
        (parallel-beam CT only), "auto" the FFT one for dense views on the CPU where the projector is
        costly (no explicit matrix), else the exact one. Default :data:`DEFAULT_NORMAL`.
    refresh : int
        With the FFT normal: steps between computations of the surrogate's error in the right-hand
        side with the projector, for the samples' mean (1: every step; for one sample that is the
        exact right-hand side). Default :data:`DEFAULT_REFRESH`.
    """

    def __init__(self, physics, y: torch.Tensor, noise_sigma: float = 0.0, cg_iterations: int = 5, use_project: bool = True,
                 normal: str | None = None, refresh: int | None = None):
        normal = DEFAULT_NORMAL if normal is None else normal
        if normal not in ("auto", "exact", "fft"):
            raise ValueError(f"normal must be 'auto', 'exact' or 'fft', got {normal!r}")
        self.physics = physics
        self.y = y
        self.noise_sigma = float(noise_sigma)
        self.cg_iterations = int(cg_iterations)
        self.closed_form = closed_form(physics, use_project)
        if normal == "fft" and not fft_normal_applies(physics):
            raise ValueError(f"normal='fft' needs a ParallelBeamCT whose detector covers the image, got {type(physics).__name__}")
        use_fft = not self.closed_form and fft_normal_applies(physics) and (
            normal == "fft" or (normal == "auto" and not y.is_cuda and _dense_and_costly(physics)))
        self.use_fft = use_fft
        self.refresh = DEFAULT_REFRESH if refresh is None else int(refresh)
        if self.refresh < 1:
            raise ValueError(f"refresh must be an integer >= 1, got {refresh!r}")
        self._normal = None  # the FFT normal, looked up on the first step
        self._back_projected = None  # A^T y
        self._correction = None  # (A^T A - N) z at the last refresh
        self._steps = 0
        self.kind = "project" if self.closed_form else f"cg{self.cg_iterations}" + (
            f"-fft-refresh{self.refresh}" if use_fft else "")

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        y = self.y.expand(z.shape[0], *self.y.shape[1:])
        if self.closed_form:
            return self.physics.project(z, y, noise_sigma=self.noise_sigma)
        damping = (self.noise_sigma / max(float(sigma), 1e-8)) ** 2
        if not self.use_fft:
            return cg_proximal_step(self.physics, z, y, damping, self.cg_iterations)
        if self._normal is None:
            self._normal = fft_normal(self.physics)  # built once per geometry, shared by the slices of a batch
        return cg_proximal_step(self.physics, z, y, damping, self.cg_iterations, self._normal, self._fft_rhs(z))

    def _fft_rhs(self, z: torch.Tensor) -> torch.Tensor:
        """``A^T (y - A z)`` as ``A^T y - N z - c``, with ``c = (A^T A - N) mean(z)`` every ``refresh`` steps."""
        if self._back_projected is None:
            self._back_projected = self.physics.A_adjoint(self.y)
        if self._steps % self.refresh == 0 or self._correction is None:
            mean = z.mean(0, keepdim=True)
            self._correction = self.physics.A_adjoint(self.physics.A(mean)) - self._normal(mean)
        self._steps += 1
        return self._back_projected - self._normal(z) - self._correction

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample relative data misfit ``||A x - y|| / ||y||``."""
        misfit = (self.physics.A(x) - self.y).flatten(1).norm(dim=1)
        return misfit / self.y.flatten(1).norm(dim=1).clamp_min(1e-12)
