"""Generative regularisers with the diffusion prior (Duff, Campbell and Ehrhardt, 2023).

Three objectives, all minimised with Adam from K restarts (the restarts give the std map):

``"diffusion"`` -- the diffusion regulariser (as in RED-diff, Mardani et al. 2023)::

    min_x  ||A x - y||^2 / (2 L)  +  lambda_reg * R(x),   R(x) = E_{sigma, eps} ||x - D(x + sigma eps, sigma)||^2 / 2

  with the score-distillation gradient ``grad R = x - D(x + sigma eps, sigma)`` (the network's
  Jacobian is dropped), ``sigma`` descending along the schedule over the iterations.

``"hard"`` -- Duff's hard generator constraint, ``x = G(z)``::

    min_z  ||A G(z) - y||^2 / (2 L)  +  alpha / 2 ||z||^2 / n

``"soft"`` -- Duff's soft constraint::

    min_{x, z}  ||A x - y||^2 / (2 L)  +  beta / 2 ||x - G(z)||^2  +  alpha / 2 ||z||^2 / n

``L = ||A^T A||`` normalises the data term so one default fits every operator; ``n`` is the number of
pixels. The generator ``G`` is the prior's deterministic probability-flow sampler (Euler = DDIM in
the VE form) with ``generator_steps`` steps from ``z * generator_sigma_max`` down to 0; gradients flow
back through it. ``z`` starts at the DDIM inversion of the initial estimate (``z_init="inversion"``,
the flow run backwards, :func:`invert_probability_flow`), each restart moved by the pCN step
:func:`restart_latents` with ``restart_spread``; ``z_init="random"`` starts from N(0, I) as Duff et al.
do. ``soft``'s ``x`` starts at the initial estimate.

``generator_sigma_max`` defaults to 0.2, not the prior's 80: a few-step flow from 80 is a poor
generator (a held-out CT image survives inversion + generation at 19.5 dB with 4 steps, 33.6 dB from
0.2), and on calibration CT images (30 views, 64 px) hard gained 7 dB (27.3 -> 34.3 dB) from it.
From 0.2 the generator is close to a learned denoiser, so hard is least squares over that denoiser's
range rather than over the prior's full generative range; ``generator_sigma_max=None`` uses the
prior's. That suits CT, not MRI 4x, whose never-measured k-space such a generator cannot fill (hard
lost 3.5 dB there from 0.2 and passed ccdf from 1): ``reconstruct`` chooses the start per scan.
Stops after ``max_iter`` iterations or when the relative change of every sample falls below ``tol``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from recon.methods.baselines import operator_norm_sq
from recon.methods.checks import check_number, check_number_or_auto, check_positive_int
from recon.methods.problem import Problem
from recon.methods.schedule import SIGMA_MIN, karras_sigmas, time_of_sigma
from recon.progress import Step, Steps

logger = logging.getLogger(__name__)

OBJECTIVES = ("diffusion", "hard", "soft")
#: The options each objective uses of those ``reconstruct`` can choose per scan ("auto"); it drops the others.
OPTIONS_OF = {"diffusion": ("lambda_reg",), "hard": ("generator_sigma_max", "alpha"),
              "soft": ("generator_sigma_max", "alpha", "beta")}
#: Each such option's candidates for "auto" (self-validation, ``reconstruct``), in the order they are
#: chosen: the generator first (CT wants a start near the image, 0.2; MRI 4x, whose unmeasured
#: k-space a near-identity generator cannot fill, about 2: docs/steering.md), then its weights.
OPTION_CANDIDATES = {"generator_sigma_max": (0.2, 0.5, 1.0, 2.0), "lambda_reg": (0.01, 0.03, 0.1, 0.17, 0.3),
                     "alpha": (0.3, 1.0, 3.0, 10.0), "beta": (0.03, 0.1, 0.3)}
Z_INITS = ("inversion", "random")
GENERATOR_SIGMA_MAX = 0.2  # the generator's flow starts here; see the docstring of genreg
INIT_NOISE = 0.5  # restarts start at x_init + INIT_NOISE * sigma_start * noise


def probability_flow(denoise, z: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler steps of the probability-flow ODE from ``sigmas[0] * z`` to 0 (DDIM)."""
    x = z * float(sigmas[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigma)
        x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * (x - denoised) / sigma
    return x


def invert_probability_flow(denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The ``z`` with ``probability_flow(denoise, z, sigmas) ~ x``: the same Euler steps run backwards (DDIM inversion).

    ``x`` is taken as the state at ``sigmas[-2]`` (sigma_min, where the final denoising step to 0 is
    close to the identity); each step goes up one level of ``sigmas``, evaluating the network at the
    lower level, as DDIM inversion does. ``len(sigmas) - 2`` network evaluations.
    """
    for i in range(len(sigmas) - 2, 0, -1):
        sigma, sigma_up = float(sigmas[i]), float(sigmas[i - 1])
        x = x + (sigma_up - sigma) * (x - denoise(x, sigma)) / sigma
    return x / float(sigmas[0])


def check_options(options: dict) -> None:
    """Refuse bad genreg options by name; ``reconstruct`` calls this before any work starts."""
    if options.get("objective", "diffusion") not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {options['objective']!r}")
    if options.get("z_init", "inversion") not in Z_INITS:
        raise ValueError(f"z_init must be one of {Z_INITS}, got {options['z_init']!r}")
    for name in ("max_iter", "generator_steps", "report_every"):
        check_positive_int(f"genreg option {name}", options.get(name, 1))
    check_number("genreg option restart_spread", options.get("restart_spread", 0.0), 0.0, high=1.0)
    for name in ("lambda_reg", "alpha"):
        check_number_or_auto(f"genreg option {name}", options.get(name, 0.0), 0.0)
    check_number_or_auto("genreg option beta", options.get("beta", 1.0), 0.0, low_inclusive=False)
    check_number("genreg option tol", options.get("tol", 0.0), 0.0)
    check_number("genreg option sigma_start", options.get("sigma_start", 1.0), 0.0, low_inclusive=False)
    if options.get("lr") is not None:
        check_number("genreg option lr", options["lr"], 0.0, low_inclusive=False)
    if options.get("generator_sigma_max") is not None:  # None: the prior's own sigma_max
        check_number_or_auto("genreg option generator_sigma_max", options["generator_sigma_max"], SIGMA_MIN,
                             low_inclusive=False)


def _data_loss(problem: Problem, x: torch.Tensor, norm_sq: float) -> torch.Tensor:
    return 0.5 * (problem.physics.A(x) - problem.y).flatten(1).pow(2).sum(1) / norm_sq


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    change = (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-12)
    return float(change.max())


def genreg(
    problem: Problem,
    objective: str = "diffusion",
    max_iter: int = 200,
    lr: Optional[float] = None,
    lambda_reg: float = 0.05,
    sigma_start: float = 0.3,
    alpha: float = 1.0,
    beta: float = 0.1,
    generator_steps: int = 4,
    generator_sigma_max: Optional[float] = GENERATOR_SIGMA_MAX,
    z_init: str = "inversion",
    restart_spread: float = 0.1,
    tol: float = 1e-5,
    report_every: int = 5,
) -> Steps:
    """K reconstructions by minimising a generative-regulariser objective (see module docstring).

    Defaults (images in [0, 1]): Adam step ``lr`` 0.02 for the image, 0.1 for the latent ``z``;
    ``lambda_reg`` 0.05 was the best of {0.05, 0.2, 0.5} on a held-out 64 px CT image; through
    ``reconstruct`` the default is ``"auto"`` (chosen per scan by held-out data), which on real slices
    chose 0.1 for CT (30 views, 1% noise; +1.3 dB over 0.05) and 0.3 for MRI 4x (+2.0 dB). ``alpha`` 1 was
    the best of 0 to 10 for hard on the real CT tuning slice (1e-3, Duff et al.'s order, gave 3.8 dB
    less); through ``reconstruct`` ``alpha`` and ``beta`` are ``"auto"`` too.
    ``generator_sigma_max`` 0.2 (of 80, 2, 1, 0.5, 0.2, 0.1, 0.05) and ``beta`` 0.1 (of 0.03 ... 3) were
    chosen on held-out CT calibration images 4-7 (30 views, 64 px), see docs/methods.md; MRI wants a
    start near 1-2, so through ``reconstruct`` it is "auto" too (:data:`OPTION_CANDIDATES`).
    """
    check_options(dict(objective=objective, max_iter=max_iter, lr=lr, lambda_reg=lambda_reg, sigma_start=sigma_start,
                       alpha=alpha, beta=beta, generator_steps=generator_steps, generator_sigma_max=generator_sigma_max,
                       z_init=z_init, restart_spread=restart_spread, tol=tol, report_every=report_every))
    if lr is None:
        lr = 0.02 if objective == "diffusion" else 0.1
    norm_sq = operator_norm_sq(problem.physics, problem.x_init)
    if objective == "diffusion":
        return (yield from _diffusion_regulariser(problem, norm_sq, max_iter, lr, lambda_reg, sigma_start, tol, report_every))
    return (yield from _generator_objective(problem, norm_sq, objective, max_iter, lr, alpha, beta, generator_steps,
                                            generator_sigma_max, z_init, restart_spread, tol, report_every))


def _diffusion_regulariser(problem, norm_sq, max_iter, lr, lambda_reg, sigma_start, tol, report_every) -> Steps:
    t_start = max(time_of_sigma(sigma_start, problem.sigma_min, problem.sigma_max), 1e-3)
    sigmas = karras_sigmas(max_iter, t_start, problem.sigma_min, problem.sigma_max)[:-1]
    x = problem.batch(problem.x_init) + INIT_NOISE * sigma_start * problem.randn_like(problem.batch(problem.x_init))
    x.requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    for i in range(max_iter):
        previous = x.detach().clone()
        sigma = float(sigmas[i])
        with torch.no_grad():
            noisy = x + sigma * problem.randn_like(x)
            regulariser_grad = x - problem.denoise(noisy, sigma)
        with torch.enable_grad():
            data = _data_loss(problem, x, norm_sq).sum()
            (data_grad,) = torch.autograd.grad(data, [x])
        x.grad = data_grad + lambda_reg * regulariser_grad
        optimiser.step()
        if (i + 1) % report_every == 0 or i + 1 == max_iter:
            yield Step.of(i + 1, max_iter, x.detach())
        if i > 10 and _relative_change(x.detach(), previous) < tol:
            logger.info("genreg converged after %d iterations", i + 1)
            yield Step.of(max_iter, max_iter, x.detach())
            break
    return x.detach()


def restart_latents(z: torch.Tensor, spread: float, noise: torch.Tensor) -> torch.Tensor:
    """Restarts ``sqrt(1 - spread^2) z + spread noise``: the pCN move, which leaves z's N(0, I) prior invariant."""
    return (1.0 - spread**2) ** 0.5 * z + spread * noise


def _generator_objective(problem, norm_sq, objective, max_iter, lr, alpha, beta, generator_steps, generator_sigma_max,
                         z_init, restart_spread, tol, report_every) -> Steps:
    sigma_max = problem.sigma_max
    if generator_sigma_max is not None:  # within the prior's range
        sigma_max = min(max(float(generator_sigma_max), problem.sigma_min), problem.sigma_max)
    sigmas = karras_sigmas(generator_steps, 1.0, problem.sigma_min, sigma_max)
    start = problem.batch(problem.x_init)
    if z_init == "random":
        z = problem.randn_like(start)
    else:
        with torch.no_grad():  # x_init's latent, once for all K restarts
            latent = invert_probability_flow(problem.denoise, problem.x_init, sigmas)
        z = restart_latents(problem.batch(latent), restart_spread, problem.randn_like(start))
    z.requires_grad_(True)
    variables = [z]
    x = None
    if objective == "soft":
        x = start.clone().requires_grad_(True)
        variables.append(x)
    optimiser = torch.optim.Adam(variables, lr=lr)
    n_pixels = start[0].numel()
    estimate = start
    for i in range(max_iter):
        previous = estimate
        with torch.enable_grad():
            generated = probability_flow(problem.denoise, z, sigmas)
            penalty = 0.5 * alpha * z.flatten(1).pow(2).sum(1) / n_pixels
            if objective == "hard":
                loss = _data_loss(problem, generated, norm_sq) + penalty
                estimate = generated.detach()
            else:
                coupling = 0.5 * beta * (x - generated).flatten(1).pow(2).sum(1)
                loss = _data_loss(problem, x, norm_sq) + coupling + penalty
                estimate = x.detach().clone()
            grads = torch.autograd.grad(loss.sum(), variables)
        for variable, grad in zip(variables, grads):
            variable.grad = grad
        optimiser.step()
        if (i + 1) % report_every == 0 or i + 1 == max_iter:
            yield Step.of(i + 1, max_iter, estimate)
        if i > 10 and _relative_change(estimate, previous) < tol:
            logger.info("genreg (%s) converged after %d iterations", objective, i + 1)
            yield Step.of(max_iter, max_iter, estimate)
            break
    with torch.no_grad():
        return probability_flow(problem.denoise, z, sigmas) if objective == "hard" else x.detach()
