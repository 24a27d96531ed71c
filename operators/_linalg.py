"""Batched conjugate gradients for symmetric positive (semi-)definite operators.

deepinv's ``conjugate_gradient`` adds a fixed ``eps = 1e-8`` to its denominators, which stalls it
near 1e-4 relative accuracy on unit-scale problems; projections need to be exact to rounding, so
this plain version (per batch item, no regularising epsilon) is used for them.
"""

from __future__ import annotations

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).real.reshape(a.shape[0], -1).sum(-1)


def conjugate_gradient(apply, b: torch.Tensor, init: torch.Tensor | None = None, max_iter: int = 200,
                       tol: float = 1e-10) -> torch.Tensor:
    """Solve ``apply(x) = b`` per batch item; stop when ``||r|| <= tol ||b||`` for every item."""
    shape = (-1,) + (1,) * (b.ndim - 1)
    x = torch.zeros_like(b) if init is None else init.clone()
    r = b - apply(x) if init is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    threshold = (tol**2) * _dot(b, b)
    for _ in range(int(max_iter)):
        if bool((rr <= threshold).all()):
            break
        ap = apply(p)
        denom = _dot(p, ap)
        alpha = torch.where(denom > 0, rr / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(rr))
        x = x + alpha.reshape(shape).to(b.dtype) * p
        r = r - alpha.reshape(shape).to(b.dtype) * ap
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta.reshape(shape).to(b.dtype) * p
        rr = rr_new
    return x
