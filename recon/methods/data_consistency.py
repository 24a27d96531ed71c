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
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cg_proximal_step(physics, z: torch.Tensor, y: torch.Tensor, damping: float, iterations: int) -> torch.Tensor:
    """``z + d`` with ``d`` from ``iterations`` CG steps on ``(A^T A + damping I) d = A^T (y - A z)``.

    ``damping = noise_sigma^2 / sigma^2``; 0 gives early-stopped least squares started at ``z``.
    Each batch element gets its own step lengths (the operators' batched CG), so K samples in one batch
    stay independent.
    """
    from operators._linalg import conjugate_gradient

    rhs = physics.A_adjoint(y - physics.A(z))
    step = conjugate_gradient(lambda d: physics.A_adjoint(physics.A(d)) + damping * d, rhs,
                              max_iter=iterations, tol=1e-6)
    return z + step


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
    """

    def __init__(self, physics, y: torch.Tensor, noise_sigma: float = 0.0, cg_iterations: int = 5, use_project: bool = True):
        self.physics = physics
        self.y = y
        self.noise_sigma = float(noise_sigma)
        self.cg_iterations = int(cg_iterations)
        self.closed_form = use_project and callable(getattr(physics, "project", None))
        self.kind = "project" if self.closed_form else f"cg{self.cg_iterations}"

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        y = self.y.expand(z.shape[0], *self.y.shape[1:])
        if self.closed_form:
            return self.physics.project(z, y, noise_sigma=self.noise_sigma)
        damping = (self.noise_sigma / max(float(sigma), 1e-8)) ** 2
        return cg_proximal_step(self.physics, z, y, damping, self.cg_iterations)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample relative data misfit ``||A x - y|| / ||y||``."""
        misfit = (self.physics.A(x) - self.y).flatten(1).norm(dim=1)
        return misfit / self.y.flatten(1).norm(dim=1).clamp_min(1e-12)
