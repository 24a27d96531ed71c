"""Exact multi-coil projections for Cartesian line masks, one small eigenproblem per image row.

When every row of the mask is the same (phase-encode lines: columns sampled, rows fully sampled),
the inverse FFT along the fully sampled axis separates multi-coil MRI into independent problems, one
per image row ``h``: ``A_h u = [M F_W (S_c[h] * u)]_c``. Their Gram matrices are small (W x W),

    G_h = A_h^H A_h = P * (S_h^H S_h),   P = F_W^H diag(m) F_W   (elementwise product),

(the real part for real images, the adjoint of the real inner product), so one batched ``eigh`` at
first use turns both projections into per-row diagonal operations in the eigenbasis:

- exact: ``x - G^+ A^H (A x - y)``;
- onto ``||A x - y|| <= r``: ``x - V diag(mu / (1 + mu lambda)) V^H A^H (A x - y)``, where the misfit
  is a closed-form function of ``mu`` (found by bisection on scalars, no operator applications).

This replaces tens to hundreds of conjugate-gradient iterations per call by one ``A`` and one ``A^H``.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

MAX_EIGENBASIS_BYTES = 1 << 30  # beyond this (e.g. 640 x 368 complex) fall back to CG


def rows_share_mask(mask: torch.Tensor) -> bool:
    """True when every row of the ``(H, W)`` mask equals the first (a line mask)."""
    return bool((mask == mask[:1]).all())


def eigenbasis_bytes(height: int, width: int, complex_images: bool, dtype: torch.dtype) -> int:
    item = (16 if complex_images else 8) if dtype == torch.float64 else (8 if complex_images else 4)
    return height * width * width * item


class RowwiseSenseProjector:
    """Per-row eigendecomposition of a multi-coil Cartesian operator's Gram matrices."""

    def __init__(self, mask_row: torch.Tensor, coil_maps: torch.Tensor, complex_images: bool, dtype: torch.dtype):
        real_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        cdtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        width = mask_row.numel()
        eye = torch.eye(width, dtype=cdtype, device=coil_maps.device)
        spectrum = _fft1c(eye, dim=0) * mask_row.to(device=coil_maps.device, dtype=real_dtype)[:, None]
        p = _ifft1c(spectrum, dim=0)  # (W, W): F^H diag(m) F
        maps = coil_maps.to(cdtype).permute(1, 0, 2)  # (H, Nc, W)
        coil_gram = maps.mH @ maps  # (H, W, W): S_h^H S_h
        gram = p[None] * coil_gram
        if not complex_images:
            gram = gram.real
        gram = (gram + gram.mH) / 2  # exact Hermitian symmetry for eigh
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(gram)
        self.eigenvalues = self.eigenvalues.clamp_min(0)
        floor = float(self.eigenvalues.max()) * (1e-10 if real_dtype == torch.float64 else 1e-5)
        self.invertible = self.eigenvalues > floor
        self.complex_images = complex_images

    def _to_basis(self, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hik,bhi->bhk", self.eigenvectors.conj(), b)

    def _from_basis(self, beta: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hik,bhk->bhi", self.eigenvectors, beta)

    def correction(self, gradient: torch.Tensor, misfit_sq: torch.Tensor, radius: float) -> torch.Tensor:
        """Step ``d`` with ``x - d`` the projection; ``gradient = A^H (A x - y)`` per row ``(B, H, W)``.

        ``misfit_sq`` is ``||A x - y||^2`` per item; ``radius = 0`` gives the exact projection.
        """
        beta = self._to_basis(gradient.to(self.eigenvectors.dtype))
        lam = self.eigenvalues[None]
        ok = self.invertible[None]
        safe_lam = torch.where(ok, lam, torch.ones_like(lam))
        if radius == 0:
            coeff = torch.where(ok, 1 / safe_lam, torch.zeros_like(lam))
            return self._from_basis(coeff * beta)
        power = (beta.abs() ** 2).to(torch.float64)
        lam64 = lam.to(torch.float64)
        target = radius**2

        def misfit_after(log_mu):
            mu = (10.0**log_mu).reshape(-1, 1, 1)
            reduction = torch.where(ok, power * mu * (2 + mu * lam64) / (1 + mu * lam64) ** 2, torch.zeros_like(power))
            return misfit_sq.to(torch.float64) - reduction.reshape(power.shape[0], -1).sum(-1)

        lo = torch.full((beta.shape[0],), -12.0, dtype=torch.float64, device=beta.device)
        hi = torch.full((beta.shape[0],), 12.0, dtype=torch.float64, device=beta.device)
        for _ in range(80):
            mid = (lo + hi) / 2
            too_far = misfit_after(mid) > target
            lo, hi = torch.where(too_far, mid, lo), torch.where(too_far, hi, mid)
        mu = (10.0**hi).reshape(-1, 1, 1).to(lam.dtype)
        coeff = torch.where(ok, mu / (1 + mu * safe_lam), torch.zeros_like(lam))
        inside = (misfit_sq <= target).reshape(-1, 1, 1)
        coeff = torch.where(inside, torch.zeros_like(coeff), coeff)
        return self._from_basis(coeff * beta)


def _fft1c(z: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(z, dim=dim), dim=dim, norm="ortho"), dim=dim)


def _ifft1c(k: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=dim), dim=dim, norm="ortho"), dim=dim)

