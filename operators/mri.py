"""Cartesian MRI: undersampled centred orthonormal Fourier transform, single- or multi-coil.

The FFT is fastMRI's ``fftshift(fft2(ifftshift(x), norm="ortho"))``, so k-space from fastMRI files
and ours line up. Tensors follow deepinv's convention: k-space ``(B, 2, H, W)`` (real, imaginary)
single-coil and ``(B, 2, N_coils, H, W)`` multi-coil; images are real ``(B, 1, H, W)`` by default or
complex as two channels ``(B, 2, H, W)`` with ``complex_images=True``.

Real images and the real inner product
---------------------------------------
For a real image ``x`` the operator maps R^n into C^m, and its adjoint for the real inner product
``<u, v> = Re(sum conj(u) v)`` is ``Re(F^H M y)``. The image space is then the space of Hermitian
k-space (``k[-f] = conj(k[f])``), so "the image closest to ``x`` whose measured k-space equals ``y``"
fixes the measured frequencies *and their mirrors*: :meth:`CartesianMRI.project` replaces both,
using the Hermitian-symmetrised data ``(M y + mirror(conj(M y))) / (M + mirror(M))``. This is the
exact orthogonal projection in the real inner product: idempotent, non-expansive, and
``A(project(x, y)) == y`` whenever ``y`` is in the range of ``A``.
"""

from __future__ import annotations

import logging
import math

import torch

from operators._checks import as_image_size
from operators._linalg import conjugate_gradient
from operators._sense_rows import MAX_EIGENBASIS_BYTES, RowwiseSenseProjector, eigenbasis_bytes, rows_share_mask
from operators.base import ReconOperator
from operators.masks import cartesian_mask

logger = logging.getLogger(__name__)

__all__ = ["CartesianMRI", "fft2c", "ifft2c"]


def fft2c(z: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (fastMRI's convention)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z, dim=dims), norm="ortho"), dim=dims)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c`."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"), dim=dims)


def _mirror(k: torch.Tensor) -> torch.Tensor:
    """``k[-f]`` on the centred grid: index ``j`` maps to ``(2 * (N // 2) - j) % N`` on both axes."""
    for dim in (-2, -1):
        n = k.shape[dim]
        index = (2 * (n // 2) - torch.arange(n, device=k.device)) % n
        k = k.index_select(dim if dim >= 0 else k.ndim + dim, index)
    return k


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class CartesianMRI(ReconOperator):
    """Undersampled Cartesian MRI with fastMRI's FFT; single-coil or multi-coil SENSE.

    Parameters
    ----------
    image_size : int or (H, W)
        Image size.
    acceleration : float
        Undersampling factor (about ``W / acceleration`` columns are measured).
    center_fraction : float
        Fraction of fully sampled central columns.
    pattern : {"random", "equispaced", "variable-density"}
        Outer-column pattern, see :mod:`operators.masks`.
    seed : int
        Seed of the mask pattern.
    mask : tensor, optional
        Explicit 0/1 mask ``(H, W)`` or ``(W,)`` (columns); overrides the pattern arguments.
    coil_maps : tensor, optional
        Sensitivity maps, complex ``(N, H, W)`` or real ``(N, 2, H, W)``. Makes the operator
        multi-coil: ``y = M F (S_c x)`` for each coil ``c``.
    complex_images : bool
        Images are ``(B, 2, H, W)`` (real, imag) instead of real ``(B, 1, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from operators import CartesianMRI
    >>> op = CartesianMRI(64, acceleration=4, center_fraction=0.08, seed=0)
    >>> x = torch.rand(1, 1, 64, 64)
    >>> y = op.A(x)
    >>> tuple(y.shape)
    (1, 2, 64, 64)
    >>> bool(torch.allclose(op.A(op.project(torch.zeros_like(x), y)), y, atol=1e-5))
    True
    """

    intensity_floor = 0.0  # signal magnitude: air gives none
    exact_projection = True  # k-space replacement (single coil), or a few CG iterations (multi-coil)

    def __init__(self, image_size, acceleration=4, center_fraction=0.08, pattern="random", seed=0, mask=None,
                 coil_maps=None, complex_images=False, **kwargs):
        height, width = as_image_size(image_size)
        self.image_size = (height, width)
        if complex_images not in (True, False):  # bool("no") is True
            raise ValueError(f"complex_images must be True or False, got {complex_images!r}")
        self.complex_images = bool(complex_images)
        self.acceleration, self.center_fraction, self.pattern, self.seed = acceleration, center_fraction, pattern, seed
        mask2d = self._make_mask(mask, height, width, acceleration, center_fraction, pattern, seed)
        maps = self._make_coil_maps(coil_maps, height, width)
        self.n_coils = None if maps is None else int(maps.shape[0])
        channels = 2 if self.complex_images else 1
        meas = (2, height, width) if maps is None else (2, self.n_coils, height, width)
        super().__init__(img_shape=(channels, height, width), measurement_shape=meas, **kwargs)
        self.register_buffer("mask", mask2d)
        self.register_buffer("coil_maps", maps)
        if maps is not None:
            self.register_buffer("_coil_norm", (maps.abs() ** 2).sum(0).real)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_mask(mask, height, width, acceleration, center_fraction, pattern, seed):
        if mask is None:
            return cartesian_mask(width, acceleration, center_fraction, pattern, seed).to(torch.float32).expand(
                height, width).contiguous()
        mask = torch.as_tensor(mask).detach().to(torch.float32).cpu()
        if mask.shape == (width,):
            mask = mask.expand(height, width).contiguous()
        if mask.shape != (height, width):
            raise ValueError(f"mask must have shape ({height}, {width}) or ({width},), got {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 and 1")
        if not bool(mask.any()):
            raise ValueError("mask measures no k-space location: there would be nothing to reconstruct from")
        return mask

    @staticmethod
    def _make_coil_maps(coil_maps, height, width):
        if coil_maps is None:
            return None
        maps = torch.as_tensor(coil_maps).detach()
        if not maps.is_complex():
            if maps.ndim != 4 or maps.shape[1] != 2:
                raise ValueError(f"real coil_maps must have shape (N, 2, H, W), got {tuple(maps.shape)}")
            maps = torch.complex(maps[:, 0].double(), maps[:, 1].double())
        if maps.ndim != 3 or tuple(maps.shape[1:]) != (height, width) or maps.shape[0] == 0:
            raise ValueError(f"coil_maps must have shape (N, {height}, {width}) with N >= 1, got {tuple(maps.shape)}")
        if not bool(torch.isfinite(torch.view_as_real(maps)).all()):
            raise ValueError("coil_maps contain NaN or Inf")
        return maps.to(torch.complex64).cpu()

    @property
    def multicoil(self) -> bool:
        return self.coil_maps is not None

    # ------------------------------------------------------------------ tensor helpers
    def _to_complex(self, x: torch.Tensor) -> torch.Tensor:
        """Image tensor -> complex ``(B, H, W)``."""
        if self.complex_images:
            return torch.complex(x[:, 0], x[:, 1])
        return x[:, 0].to(_complex_dtype(x.dtype))

    def _from_complex(self, z: torch.Tensor, dtype) -> torch.Tensor:
        if self.complex_images:
            return torch.stack([z.real, z.imag], dim=1).to(dtype)
        return z.real[:, None].to(dtype)

    @staticmethod
    def _kspace(y: torch.Tensor) -> torch.Tensor:
        return torch.complex(y[:, 0], y[:, 1])

    @staticmethod
    def _measurement(k: torch.Tensor, dtype) -> torch.Tensor:
        return torch.stack([k.real, k.imag], dim=1).to(dtype)

    def _mask_like(self, t: torch.Tensor) -> torch.Tensor:
        real = torch.float64 if t.dtype in (torch.float64, torch.complex128) else torch.float32
        return self.mask.to(device=t.device, dtype=real)

    def _maps_like(self, z: torch.Tensor) -> torch.Tensor:
        return self.coil_maps.to(device=z.device, dtype=z.dtype)

    # ------------------------------------------------------------------ linear maps
    def A(self, x, **kwargs):
        """Image -> masked k-space."""
        self.check_image(x)
        z = self._to_complex(x)
        if self.multicoil:
            z = z[:, None] * self._maps_like(z)[None]
        k = fft2c(z) * self._mask_like(x)
        return self._measurement(k, x.dtype)

    def A_adjoint(self, y, **kwargs):
        """Adjoint for the real inner product (real part for real images, coil-combined)."""
        self._check_adjoint_input(y)
        z = ifft2c(self._kspace(y) * self._mask_like(y))
        if self.multicoil:
            z = (z * self._maps_like(z)[None].conj()).sum(1)
        return self._from_complex(z, y.dtype)

    def A_dagger(self, y, **kwargs):
        """Zero-filled inverse FFT (multi-coil: SENSE coil combination normalised by sum |S|^2)."""
        self.check_measurement(y)
        z = ifft2c(self._kspace(y) * self._mask_like(y))
        if self.multicoil:
            norm = self._coil_norm.to(device=y.device, dtype=z.real.dtype).clamp_min(1e-8)
            z = (z * self._maps_like(z)[None].conj()).sum(1) / norm
        return self._from_complex(z, y.dtype)

    # ------------------------------------------------------------------ self-validation
    def held_out_entries(self, fraction: float, generator: torch.Generator, like=None) -> torch.Tensor:
        """Measured k-space entries to hold out for self-validation, as a bool measurement mask ``(1, *measurement_shape)``.

        Held out as the acquisition undersamples: whole measured columns when the mask is made of
        columns (a random ``fraction`` of the columns outside the fully sampled centre, at least two),
        else single locations. The centre carries most of the energy, and every candidate must see it.
        The same for the real and imaginary parts and for every coil. For real images a location and
        its mirror are held out together: the mirror's value is the conjugate, so keeping it would
        reveal the held-out value.
        """
        height, width = self.image_size
        measured = self.mask.bool().cpu()
        columns = measured.all(0)
        centre, lo, hi = width // 2, width // 2, width // 2
        while lo - 1 >= 0 and columns[lo - 1]:
            lo -= 1
        while hi + 1 < width and columns[hi + 1]:
            hi += 1
        outer = measured.clone()
        if columns[centre]:
            outer[:, lo : hi + 1] = False
        by_columns = bool((measured == measured[:1]).all()) and bool(outer.any())
        if by_columns:
            candidates = torch.nonzero(outer[0]).flatten()
            order = candidates[torch.randperm(len(candidates), generator=generator, device=generator.device).cpu()]
            share = fraction if self.complex_images else fraction / 2
            chosen = torch.zeros((height, width))
            chosen[:, order[: max(2, round(share * len(candidates)))]] = 1.0
        else:
            draw = torch.rand((height, width), generator=generator, device=generator.device).cpu()
            chosen = (draw < (fraction if self.complex_images else fraction / 2)).to(torch.float32)
        held = outer & ((chosen if self.complex_images else chosen + _mirror(chosen)) > 0)
        held = held.expand(*self.measurement_shape[:-2], height, width)
        return held.reshape(1, *self.measurement_shape).to(self.mask.device)

    def fill_held_out(self, y: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
        """Held-out k-space left at zero, as unmeasured k-space is."""
        return y * (~held_out).to(y.dtype)

    def restricted(self, keep: torch.Tensor) -> "CartesianMRI":
        """The same acquisition measuring only where ``keep`` (a measurement mask from :meth:`held_out_entries`) is true."""
        keep2d = keep.reshape(-1, *self.image_size)[0].to(device="cpu", dtype=torch.float32)
        maps = None if self.coil_maps is None else self.coil_maps.cpu()
        return CartesianMRI(self.image_size, mask=self.mask.cpu() * keep2d, coil_maps=maps,
                            complex_images=self.complex_images).to(self.mask.device)

    # ------------------------------------------------------------------ data consistency
    def project(self, x, y, noise_sigma: float = 0.0, max_iter: int = 50):
        """Closest image to ``x`` consistent with the measured k-space ``y``.

        ``noise_sigma == 0``: exact data consistency (hard replacement of the measured k-space; for
        real images the mirrored frequencies too, see the module notes). ``noise_sigma > 0``:
        projection onto the convex set of images whose measured k-space lies within
        the expected noise norm ``noise_sigma * sqrt(2 * sum over the measured entries of 1 / looks)``
        of the data (``looks`` = 2 where a real image's mirrored pair averages two measurements), i.e. the measured
        frequencies move towards the data only as far as the noise allows. ``noise_sigma`` is the
        standard deviation of each real and imaginary k-space component. Both are projections
        onto convex sets: idempotent and non-expansive. Multi-coil uses conjugate gradients
        (``max_iter`` iterations) since the coil-expanded operator has no closed form.
        """
        self.check_image(x)
        self.check_measurement(y)
        if noise_sigma < 0 or not math.isfinite(noise_sigma):
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma}")
        if self.multicoil:
            return self._project_multicoil(x, y, float(noise_sigma), max_iter)
        k = fft2c(self._to_complex(x))
        mask = self._mask_like(x)
        data = self._kspace(y).to(k.dtype) * mask
        if self.complex_images:
            support, target, looks = mask, data, torch.ones_like(mask)
        else:
            mirrored = _mirror(mask)
            support = torch.clamp(mask + mirrored, max=1.0)
            looks = (mask + mirrored).clamp_min(1.0)  # measurements behind each entry: 1, or 2 for a mirrored pair
            target = (data + _mirror(data).conj()) / looks
        residual = (k - target) * support
        # E||residual||^2 of the true image: 2 sigma^2 per entry, halved where two measurements are averaged
        expected = 2 * float((support / looks).sum())
        shrink = _ball_shrink(residual, noise_sigma * math.sqrt(expected))
        return self._from_complex(ifft2c(k - shrink * residual), x.dtype)

    def _project_multicoil(self, x, y, noise_sigma, max_iter):
        y = y * self._mask_like(y)  # only measured entries are data
        residual = self.A(x) - y
        radius = noise_sigma * math.sqrt(2 * float(self.mask.sum()) * self.n_coils)
        rowwise = self._rowwise_projector(x.dtype, x.device)
        if rowwise is not None:
            gradient = self.A_adjoint(residual)
            gradient = self._to_complex(gradient) if self.complex_images else gradient[:, 0]
            misfit_sq = residual.reshape(residual.shape[0], -1).pow(2).sum(-1)
            step = rowwise.correction(gradient, misfit_sq, radius)
            return x - self._from_complex(step, x.dtype) if self.complex_images else x - step.real[:, None].to(x.dtype)
        if noise_sigma == 0:
            # x - A^+ (A x - y): CG on the normal equations from zero gives the minimum-norm correction.
            correction = conjugate_gradient(self.A_adjoint_A, self.A_adjoint(residual), max_iter=max_iter, tol=1e-10)
            return x - correction
        return _ball_projection_cg(self, x, y, radius, max_iter)

    def _rowwise_projector(self, dtype, device):
        """Cached per-row eigenbasis (line masks only, and only if it fits in memory), else None."""
        cache = self.__dict__.setdefault("_rowwise_cache", {})
        key = (dtype, str(device))
        if key not in cache:
            height, width = self.image_size
            size = eigenbasis_bytes(height, width, self.complex_images, dtype)
            if not rows_share_mask(self.mask) or size > MAX_EIGENBASIS_BYTES:
                logger.info("multi-coil projection by CG (line mask: %s, eigenbasis %.0f MB)",
                            rows_share_mask(self.mask), size / 2**20)
                cache[key] = None
            else:
                cache[key] = RowwiseSenseProjector(self.mask[0].to(device), self.coil_maps.to(device),
                                                   self.complex_images, dtype)
        return cache[key]

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, acceleration={self.acceleration}, pattern={self.pattern!r}, "
                f"n_coils={self.n_coils}, complex_images={self.complex_images}")


def _ball_shrink(residual: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-item factor ``max(0, 1 - radius / ||residual||)``: moving by it projects onto the ball."""
    norms = residual.reshape(residual.shape[0], -1).abs().pow(2).sum(-1).sqrt()
    if radius == 0:
        shrink = torch.ones_like(norms)
    else:
        shrink = (1 - radius / norms.clamp_min(1e-30)).clamp_min(0.0)
    return shrink.reshape((-1,) + (1,) * (residual.ndim - 1)).to(residual.real.dtype)


def _ball_projection_cg(op, x, y, radius, max_iter, n_bisect: int = 10):
    """Project ``x`` onto ``{z : ||A z - y|| <= radius}`` for a general linear ``op``.

    The projection is ``z(mu) = (I + mu A^T A)^{-1} (x + mu A^T y)`` with the multiplier ``mu >= 0``
    chosen so that ``||A z(mu) - y|| = radius`` (or ``mu = 0`` if ``x`` is already inside); ``mu`` is
    found per batch item by bisection on ``log10 mu`` in [-6, 8] (10 steps: ``mu`` within ~3 %), each step a
    CG solve warm-started from the previous one.
    """
    adjoint_y = op.A_adjoint(y)

    def solve(mu, init):
        mu_b = mu.reshape((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)
        return conjugate_gradient(lambda z: z + mu_b * op.A_adjoint_A(z), x + mu_b * adjoint_y, init=init,
                                  max_iter=max_iter, tol=1e-7)

    def misfit(z):
        return (op.A(z) - y).reshape(z.shape[0], -1).norm(dim=-1)

    inside = misfit(x) <= radius
    if bool(inside.all()):
        return x
    lo = torch.full((x.shape[0],), -6.0, dtype=torch.float64, device=x.device)
    hi = torch.full((x.shape[0],), 8.0, dtype=torch.float64, device=x.device)
    z = x
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        z = solve(10**mid, z)
        too_far = misfit(z) > radius
        lo = torch.where(too_far, mid, lo)
        hi = torch.where(too_far, hi, mid)
    z = solve(10**hi, z)
    keep = inside.reshape((-1,) + (1,) * (x.ndim - 1))
    return torch.where(keep, x, z)
