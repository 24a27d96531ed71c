"""Come-Closer-Diffuse-Faster (Chung, Sim and Ye, CVPR 2022).

A good initial estimate only needs a short reverse diffusion: forward-diffuse it to a small time
``t0`` (``x_t0 = x_init + sigma(t0) * noise``) and run ``steps`` reverse steps with data consistency
after each (the shared loop in ``diffusion.py``). The paper's contraction argument: the reverse
process with data consistency shrinks errors geometrically, so starting from ``x_init`` at noise
level ``sigma(t0)`` reaches the posterior as long as that noise covers the initial error.

``t0 = "auto"`` applies that argument (:func:`auto_t0`): estimate the initial estimate's error level
``e`` with the prior itself, then start where ``sigma(t0) = margin * e``. The margin is ``k / r``,
``r`` the measured values per unknown (:func:`measurements_per_unknown`), clamped to the range it was
fitted on: the fewer the measurements, the more of the image the prior must generate and the higher
it must start. ``k`` depends on how strongly the data-consistency step contracts:

* an exact projection (SR's back-projection, MRI's k-space replacement) restores the measured data
  at every step, so a high start costs little: ``2 / r``, 4 for 4x MRI, 8 for 8x;
* the few-iteration CG step (CT, any operator without a closed form) cannot bring back detail a high
  start loses: ``0.09 / r`` (30-view CT: r = 0.30 at 128 px, 0.15 at 256, 0.075 at 512).

A margin below 1 still starts above the true error: the probe overstates it (0.27 estimated for a
true RMS error of 0.095 on 256 px, 30-view FBP). The margins were tuned on held-out images kept apart
from the benchmark's evaluation images (``docs/methods.md``, "Auto t0", has the sweeps).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from recon.methods.diffusion import reverse_diffusion
from recon.methods.problem import Problem
from recon.methods.schedule import SIGMA_END, karras_sigmas, sigma_at, time_of_sigma
from recon.progress import Steps

logger = logging.getLogger(__name__)

#: Noise levels probed by :func:`estimate_error_level` (one batch of network evaluations).
PROBE_SIGMAS = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8)
#: Exact-projection data consistency: ``margin = MARGIN_PROJECTION_SAMPLING / r``, clamped to
#: ``MARGIN_PROJECTION_LIMITS``: 4 for 4x MRI (r = 0.5), 8 for 8x (0.25), the best of the calibration
#: margin sweep on each (an empirical fit through those two; docs/methods.md); SR x4 (r = 1/16) declines
#: slightly from 6 to 32 on its calibration image (26.62 to 26.59 dB).
MARGIN_PROJECTION_SAMPLING = 2.0
MARGIN_PROJECTION_LIMITS = (4.0, 32.0)
#: CG data consistency: ``margin = MARGIN_CG_SAMPLING / r``, ``r`` = measurements per unknown
#: (:func:`measurements_per_unknown`). Fitted (version 0.4.0) on noiseless parallel-beam CT calibration images
#: at 128 px (30-90 views), 256 px (30-120) and 512 px (30 views): r from 0.075 to 0.9 (docs/methods.md, "Auto t0").
MARGIN_CG_SAMPLING = 0.09
#: The CG margin is clamped to the range of that fit: 0.1 at r = 0.9, 1.2 at r = 0.075 (512 px, 30 views).
MARGIN_CG_LIMITS = (0.1, 1.2)


def ccdf(problem: Problem, steps: int = 20, t0: float = 0.25, zeta: float = 1.0, sigma_end: float = SIGMA_END) -> Steps:
    """K posterior samples: forward-diffuse ``x_init`` to ``t0``, then ``steps`` reverse steps with DC."""
    sigmas = karras_sigmas(steps, t0, problem.sigma_min, problem.sigma_max, sigma_end=sigma_end)
    x = problem.batch(problem.x_init)
    x = x + sigmas[0] * problem.randn_like(x)
    return (yield from reverse_diffusion(problem, x, sigmas, zeta))


def estimate_error_level(denoise, x_init: torch.Tensor, ratio: float = 0.5) -> float:
    """RMS error level of ``x_init`` as the prior sees it.

    Denoise ``x_init`` at each probe level ``s`` (one batch; the denoiser chunks it). While ``s`` is
    below the estimate's error, the denoiser removes about ``s`` of what it takes for noise, so ``r(s) = rms(D(x, s) - x)``
    stays near ``s``; above it there is nothing left to remove and ``r(s) / s`` falls. The error level
    is the largest ``s`` with ``r(s) / s >= ratio``.
    """
    probes = torch.tensor(PROBE_SIGMAS, dtype=x_init.dtype, device=x_init.device)
    batch = x_init.expand(len(probes), *x_init.shape[1:])
    denoised = denoise(batch, probes)
    residual = (denoised - batch).flatten(1).pow(2).mean(1).sqrt()
    ratios = (residual / probes).tolist()
    level = interpolate_crossing(PROBE_SIGMAS, ratios, ratio)
    logger.debug("error probe r(s)/s = %s -> %.3g", ratios, level)
    return level


def interpolate_crossing(levels, ratios, ratio: float) -> float:
    """Largest level where ``ratios`` is still >= ``ratio``, refined between probes (linear in log s).

    Without the refinement the estimate snaps to the probe grid, and two initial estimates whose
    errors differ by half (FBP at 128 and at 256 px) get the same start time.
    """
    above = [i for i, r in enumerate(ratios) if r >= ratio]
    if not above:
        return float(levels[0])
    i = above[-1]
    if i + 1 == len(levels) or not ratios[i + 1] < ratios[i]:  # last probe, or no fall (NaN included)
        return float(levels[i])
    fraction = (ratios[i] - ratio) / (ratios[i] - ratios[i + 1])
    return float(levels[i] * (levels[i + 1] / levels[i]) ** fraction)


def measurements_per_unknown(problem: Problem) -> float:
    """Measured values per unknown: nonzero entries of ``A`` applied to a random image, over its size.

    Counting nonzeros rather than ``y.numel()`` leaves out what masking operators zero-fill (the
    unmeasured k-space lines of MRI, deepinv's ``Inpainting``) and CT bins whose rays miss the image.
    A complex measurement counts twice, like the real and imaginary images. The coils of multi-coil
    MRI (an operator's ``n_coils``) sample the same k-space points, so they count once; other
    redundant measurements still count (a 360-degree fan-beam scan's opposite rays).
    """
    coils = problem.physics.n_coils or 1
    measured = int(problem.physics.measured_entries(problem.x_init).sum()) / coils
    if measured == 0:
        raise ValueError("the operator maps a random image to zero: nothing is measured, so no start time can be chosen")
    return measured / problem.x_init.numel()


def default_margin(problem: Problem) -> float:
    """``k / r`` (r: :func:`measurements_per_unknown`), clamped; k and the clamp depend on the data consistency."""
    if problem.dc.closed_form:
        k, (low, high) = MARGIN_PROJECTION_SAMPLING, MARGIN_PROJECTION_LIMITS
    else:
        k, (low, high) = MARGIN_CG_SAMPLING, MARGIN_CG_LIMITS
    return min(max(k / measurements_per_unknown(problem), low), high)


def clamp_t0(t0: float, t_min: float = 0.05) -> float:
    """``t0`` within ``[t_min, 1]``, the range auto t0 keeps to."""
    return min(max(float(t0), t_min), 1.0)


def auto_t0(problem: Problem, margin: Optional[float] = None, t_min: float = 0.05) -> tuple[float, float, float]:
    """Start time whose noise level is ``margin`` times the estimated initial error; (t0, error, margin).

    ``margin`` defaults to :func:`default_margin`.
    """
    if margin is None:
        margin = default_margin(problem)
    error = estimate_error_level(problem.denoise, problem.x_init)
    t0 = clamp_t0(time_of_sigma(margin * error, problem.sigma_min, problem.sigma_max), t_min)
    logger.info("auto t0: initial error ~%.3g -> t0 = %.3f (sigma %.3g)", error, t0, sigma_at(t0, problem.sigma_min, problem.sigma_max))
    return t0, error, margin
