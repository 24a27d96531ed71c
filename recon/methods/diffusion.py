"""Full reverse diffusion from pure noise with data consistency: the slow reference.

Score-SDE style posterior sampling (Song et al. 2022; Chung et al. 2022): start at ``sigma_max``
noise and walk the whole sigma schedule down, projecting the denoised estimate onto the data after
every network evaluation. ``reverse_diffusion`` is the shared loop; CCDF (``ccdf.py``) runs the same
loop from a short start.
"""

from __future__ import annotations

import math

import torch

from recon.methods.problem import Problem
from recon.methods.schedule import karras_sigmas


def reverse_diffusion(problem: Problem, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Walk ``x`` (noisy at ``sigmas[0]``) down ``sigmas`` (ending at 0); one network call per step.

    Each step (VE form of DDIM with ancestral noise ``eta``; ``eta = 1`` is DDPM-like, 0 deterministic):

    1. ``x0 = D(x, sigma)``, the prior's denoised estimate;
    2. ``x0 <- dc(x0, sigma)``, data consistency on the denoised estimate (as in DDS, Chung et al.
       2023: the correction acts on the clean estimate, not on the noisy state);
    3. ``x <- x0 + sqrt(sigma'^2 - c^2) * (x - D(x, sigma)) / sigma + c * noise`` with
       ``c = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)``, re-noising to the next level ``sigma'``.

    The last level is 0, so the last step returns the data-consistent clean estimate.
    """
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = problem.denoise(x, sigma)
        consistent = problem.dc(denoised, sigma)
        if sigma_next > 0:
            noise_direction = (x - denoised) / sigma
            ancestral = eta * sigma_next * math.sqrt(max(1.0 - (sigma_next / sigma) ** 2, 0.0))
            deterministic = math.sqrt(max(sigma_next**2 - ancestral**2, 0.0))
            x = consistent + deterministic * noise_direction + ancestral * problem.randn_like(x)
        else:
            x = consistent
        problem.report(i + 1, total, consistent)
    return x


def diffusion(problem: Problem, steps: int = 100, eta: float = 1.0) -> torch.Tensor:
    """Posterior samples by reverse diffusion from pure noise ``sigma_max * N(0, I)``; ``steps`` NFE."""
    sigmas = karras_sigmas(steps, 1.0, problem.sigma_min, problem.sigma_max)
    x = problem.batch(problem.x_init)
    x = sigmas[0] * problem.randn_like(x)
    return reverse_diffusion(problem, x, sigmas, eta)
