"""Deterministic baselines: the operator's fast pseudo-inverse and TV-regularised least squares.

Both are step generators (``recon.progress``) that return one estimate; `reconstruct` stores it as
the single sample with a zero std map.
"""

from __future__ import annotations

import logging

import torch

from recon.methods.checks import check_number_or_auto, check_positive_int
from recon.methods.problem import Problem
from recon.progress import Step, Steps

logger = logging.getLogger(__name__)


def fbp(problem: Problem) -> Steps:
    """The initial estimate itself: ``physics.A_dagger(y)`` (FBP, zero-filled IFFT, upsampling)."""
    yield Step.of(1, 1, problem.x_init)
    return problem.x_init.clone()


def operator_norm_sq(physics, like: torch.Tensor, iterations: int = 30) -> float:
    """``||A^T A||`` by power iteration (quiet, few iterations: it only sets step sizes)."""
    # A fixed start vector (not the global RNG), so a given seed gives the same result in any process.
    # deepinv's compute_norm ignores its start's values (it draws torch.randn_like from the global RNG),
    # so the power iteration (same rule as deepinv's: stop when the estimate moves by < 1e-3) is run here.
    generator = torch.Generator(device=like.device).manual_seed(0)
    x = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    x = x / torch.linalg.vector_norm(x)
    previous = None
    with torch.no_grad():
        for _ in range(iterations):
            y = physics.A_adjoint(physics.A(x))
            estimate = float(torch.vdot(x.flatten(), y.flatten()) / torch.linalg.vector_norm(x) ** 2)
            if previous is not None and abs(estimate - previous) < 1e-3:
                break
            previous = estimate
            x = y / torch.linalg.vector_norm(y)
    return estimate


def check_options(options: dict) -> None:
    """Refuse bad ``tv`` options by name; ``reconstruct`` calls this before any work starts.

    ``report_every=0`` would never advance, a NaN ``lambda_tv`` gives an all-NaN image.
    """
    check_number_or_auto("tv option lambda_tv", options.get("lambda_tv", 0.0), 0.0)
    for name in ("max_iter", "report_every", "tv_inner_iter"):
        check_positive_int(f"tv option {name}", options.get(name, 1))


#: Candidates of ``lambda_tv="auto"`` (self-validation, ``recon.methods.option_choice``): the range where the
#: tuned values of the real-scan benchmark fall (CT 1e-3 to 3e-3, MRI 1e-2 to 3e-2, SR 1e-3 to 1e-2).
TV_LAMBDAS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def tv(problem: Problem, lambda_tv: float = 0.003, max_iter: int = 100, report_every: int = 10, tv_inner_iter: int = 20) -> Steps:
    """TV-regularised least squares with deepinv's proximal gradient descent.

    Solves ``min_x 1/2 ||A x - y||^2 + lambda ||A^T A|| TV(x)`` from the initial estimate, with
    ``deepinv.optim.PGD``, ``deepinv.optim.data_fidelity.L2`` and ``deepinv.optim.TVPrior``, step
    ``1 / ||A^T A||``. ``lambda_tv`` is relative to ``||A^T A||`` so the scale of the operator does not matter
    (``"auto"``: chosen per scan from :data:`TV_LAMBDAS` by held-out data, see ``reconstruct``); the
    default 0.003 (images in [0, 1]) is the best of {0.0003, 0.001, 0.003, 0.01} on two held-out
    128 px CT images with 30 views. Other problems prefer other values (4x MRI: ~0.03, SR x4:
    ~0.01); ``benchmarks/bench_methods.py`` tunes it per task on a separate image.
    PGD keeps no state between iterations, so it runs in segments of ``report_every`` iterations,
    each started where the last stopped, to yield progress between them.
    """
    from deepinv.optim import PGD, TVPrior
    from deepinv.optim.data_fidelity import L2

    norm_sq = operator_norm_sq(problem.physics, problem.x_init)

    def segment(iterations: int):
        return PGD(
            data_fidelity=L2(),
            prior=TVPrior(n_it_max=tv_inner_iter),
            lambda_reg=lambda_tv * norm_sq,
            stepsize=1.0 / norm_sq,
            max_iter=iterations,
            early_stop=False,
        )

    x = problem.x_init.clone()
    done = 0
    while done < max_iter:
        iterations = min(report_every, max_iter - done)
        with torch.no_grad():
            x = segment(iterations)(problem.y, problem.physics, init=x)
        done += iterations
        yield Step.of(done, max_iter, x)
    return x
