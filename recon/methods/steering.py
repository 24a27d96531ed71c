"""Steering: adapt the prior to one scan (test-time adaptation): its options, and the misfit objective.

Two objectives fit the adapters (``AdaptOptions.objective``): "denoising", the default, trains them
before sampling on the scan's first reconstruction (``self_training.py``); "misfit", here, adapts
while sampling. As in Steerable Conditional Diffusion (Barbano, Denker, Chung et al. 2023) and Deep Diffusion Image
Prior (Chung and Ye 2024): at each of the first sampling steps, a few Adam steps move low-rank adapters
on the prior's convolutions (``adapters.py``) to reduce the data misfit of the denoised estimate,
``||A D(x_t, sigma) - y||^2 / ||y||^2``, plus a small penalty on the adapters. The adapters carry from
step to step, and adaptation stops once the misfit reaches the measurement noise (the discrepancy
principle), so the prior is not taught the noise.

Adaptation runs on the fit part of the data inside self-validation (``selfvalidation.py``), which
keeps the adapted prior only where it predicts the held-out data better than the shipped one, then
folds the adapters into the weights for the K samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch

from recon.methods.adapters import adapter_count, with_adapters
from recon.methods.checks import check_number, check_positive_int
from recon.methods.data_consistency import step_kind
from recon.methods.problem import Problem
from recon.methods.registry import ADAPT_OBJECTIVES
from recon.methods.self_training import SIGMA_LOWEST


#: The options only the misfit objective reads (reported in its metadata).
MISFIT_OPTIONS = ("iterations", "share", "penalty", "tau", "samples")
#: Adam's step size where ``lr`` is not given, per objective (each the best on the tuning slices).
DEFAULT_LR = {"denoising": 1e-3, "misfit": 2e-3}
#: ``sigma_floor`` where it is not given, by the data-consistency step (as auto t0's margins are): an
#: operator that restores its measured data exactly (MRI, SR) leaves the reconstruction's errors in
#: what it never measures, at every scale, and a floor of 0.05 kept adapting from learning them (a floor
#: of 0.02 lost 0.2-0.8 dB on 2 of 3 MR tuning slices); behind CT's few-iteration CG step the fine
#: scales of the first reconstruction are worth learning, and 0.02 gained 0.15-0.2 dB over 0.05 on both
#: out-of-distribution CT tuning slices (docs/steering.md).
DEFAULT_SIGMA_FLOOR = {"projection": 0.05, "cg": 0.02}
#: ``start_factor`` where it is not given, by the data-consistency step: a self-trained prior has learnt
#: the scan, so behind CT's CG step ccdf can start it from more noise than auto t0 gives the shipped
#: prior (on the three CT tuning slices 1.4 gained +0.08 to +0.21 dB over auto t0 with the same adapted
#: prior, longer starts at most 0.09 dB more). On MRI and SR, where data consistency is an exact
#: projection, 1.4 gained on the tuning slices but lost 0.05-0.28 dB on every held-out volume, so
#: there the start stays auto t0's (docs/steering.md).
DEFAULT_START_FACTOR = {"projection": 1.0, "cg": 1.4}
#: ``rank`` where it is not given, by the data-consistency step: behind CT's CG step the adapters learn
#: detail the first reconstruction holds, and rank 8 gained 0.07-0.14 dB over 4 on the three CT tuning
#: slices; behind an exact projection it lost 0.05-0.32 dB on all four MR and SR tuning slices (and 16
#: lost more), so there it stays 4 (docs/steering.md).
DEFAULT_RANK = {"projection": 4, "cg": 8}


@dataclass(frozen=True)
class AdaptOptions:
    """How the prior adapts.

    objective : "denoising" (default): train the adapters by denoising the scan's first reconstruction
        (``self_training.py``); "misfit": fit the denoised estimates to the data while sampling (below)
    rank : rank of each convolution's adapter (default :data:`DEFAULT_RANK` of the data-consistency step)
    lr : Adam's step size (default :data:`DEFAULT_LR` of the objective)

    "denoising" only:

    train_steps : Adam steps
    batch : patches per step
    patch : side of the square training patches, in pixels
    sigma_floor : below this noise level the adapted prior is held to the shipped one (default
        :data:`DEFAULT_SIGMA_FLOOR` of the operator's data-consistency step, :meth:`for_operator`)
    sigma_ceiling : highest training noise level
    start_factor : ccdf's auto ``t0`` is multiplied by this where the adapted prior samples (default
        :data:`DEFAULT_START_FACTOR` of the data-consistency step; 1 starts where auto t0 would)
    rounds : trainings in turn; each after the first starts again from the shipped prior and trains on
        the reconstructions the previous round's adapted prior made (the fit run's, and the volume's
        other training slices'); self-validation keeps the round whose fit run predicts the held-out
        data best, then gates it as one round is gated

    "misfit" only:

    iterations : Adam steps at each adapted sampling step
    share : share of the sampling steps (the first ones) that adapt
    penalty : weight of the squared adapter weights in the loss, relative to the misfit
    tau : stop when the RMS misfit per measured value falls to ``tau`` times the noise std
    samples : trajectories the loss averages over (the first of the run's batch)
    """

    objective: str = ADAPT_OBJECTIVES[0]
    rank: Optional[int] = None
    lr: Optional[float] = None
    train_steps: int = 300
    batch: int = 8
    patch: int = 64
    sigma_floor: Optional[float] = None
    sigma_ceiling: float = 2.0
    start_factor: Optional[float] = None
    rounds: int = 1
    iterations: int = 2
    share: float = 0.5
    penalty: float = 1e-3
    tau: float = 1.0
    samples: int = 1

    @property
    def step_size(self) -> float:
        """Adam's step size: ``lr``, or the objective's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.objective]

    @classmethod
    def parse(cls, value) -> "AdaptOptions":
        """From a dict of overrides (unknown names and bad values refused); ``True`` or ``None`` for the defaults."""
        if value is None or value is True:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"adapt options must be a dict, got {type(value).__name__}")
        unknown = set(value) - set(asdict(cls()))
        if unknown:
            raise ValueError(f"unknown adapt option(s) {sorted(unknown)}; expected some of {sorted(asdict(cls()))}")
        options = cls(**value)
        if options.objective not in ADAPT_OBJECTIVES:
            raise ValueError(f"adapt option objective must be one of {ADAPT_OBJECTIVES}, got {options.objective!r}")
        for name in ("iterations", "samples", "train_steps", "batch", "patch", "rounds"):
            check_positive_int(f"adapt option {name}", getattr(options, name))
        if options.rank is not None:
            check_positive_int("adapt option rank", options.rank)
        if options.lr is not None:
            check_number("adapt option lr", options.lr, 0.0, low_inclusive=False, high=1.0)
        if options.sigma_floor is not None:
            check_number("adapt option sigma_floor", options.sigma_floor, 0.0)
        floor = max(DEFAULT_SIGMA_FLOOR.values()) if options.sigma_floor is None else options.sigma_floor
        check_number("adapt option sigma_ceiling", options.sigma_ceiling, max(floor, SIGMA_LOWEST), low_inclusive=False)
        if options.start_factor is not None:
            check_number("adapt option start_factor", options.start_factor, 0.0, low_inclusive=False, high=10.0)
        check_number("adapt option share", options.share, 0.0, low_inclusive=False, high=1.0)
        check_number("adapt option penalty", options.penalty, 0.0)
        check_number("adapt option tau", options.tau, 0.0)
        return options

    def for_operator(self, exact_projection: bool) -> "AdaptOptions":
        """These options with ``rank``, ``sigma_floor`` and ``start_factor``, where not given, set for a
        data-consistency step that is an exact projection or CG."""
        step = step_kind(exact_projection)
        rank = DEFAULT_RANK[step] if self.rank is None else self.rank
        floor = DEFAULT_SIGMA_FLOOR[step] if self.sigma_floor is None else self.sigma_floor
        factor = DEFAULT_START_FACTOR[step] if self.start_factor is None else self.start_factor
        return replace(self, rank=rank, sigma_floor=floor, start_factor=factor)


class Steering:
    """``before_step`` hook of the reverse-diffusion loop that adapts a copy of ``prior`` to the data.

    :meth:`attach` gives a ``Problem`` that samples with the adapted prior and this hook; the shipped
    ``prior`` is never modified. ``make_denoiser(prior)`` wraps a prior as the methods see it.
    """

    def __init__(self, prior, options: AdaptOptions, steps: int, make_denoiser: Callable, seed: int):
        if options.rank is None:
            raise ValueError("Steering needs a rank: set it, or take the operator's with AdaptOptions.for_operator")
        self.options = options
        self.adapted, self.parameters = with_adapters(prior, options.rank, seed)
        self.denoise = make_denoiser(self.adapted)
        self.optimizer = torch.optim.Adam(self.parameters, lr=options.step_size)
        self.adapt_steps = max(1, round(options.share * steps))
        self.backward_images = 0
        self.stopped_at = None  # step at which the misfit reached the noise level
        self.misfits = []  # mean squared misfit per measured value, before each Adam step
        self.problem = None

    def attach(self, problem: Problem) -> Problem:
        """``problem`` sampled with the adapted prior, adapting it to ``problem``'s data on the way."""
        self.problem = problem = replace(problem, denoise=self.denoise, before_step=self)
        with torch.no_grad():
            self.measured = max(int(problem.physics.measured_entries(problem.x_init).sum()), 1)
        self.noise_power = float(problem.noise_sigma) ** 2
        self.y_power = float(problem.y.pow(2).sum()) / self.measured
        return problem

    def __call__(self, x: torch.Tensor, sigma: float, step: int) -> None:
        if step >= self.adapt_steps or self.stopped_at is not None:
            return
        x = x[: self.options.samples].detach()
        with torch.enable_grad():
            for _ in range(self.options.iterations):
                residual = self.problem.physics.A(self.denoise(x, sigma)) - self.problem.y
                misfit = residual.pow(2).flatten(1).sum(1).mean() / self.measured
                self.misfits.append(float(misfit.detach()))
                if self.noise_power > 0 and self.misfits[-1] <= self.options.tau**2 * self.noise_power:
                    self.stopped_at = step
                    return
                penalty = sum(p.pow(2).sum() for p in self.parameters)
                loss = misfit / self.y_power + self.options.penalty * penalty
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.backward_images += x.shape[0]

    def report(self) -> dict:
        """What the adaptation did, for the Result's metadata."""
        return {"objective": "misfit", "adapter_values": adapter_count(self.parameters), "adapted_steps": self.adapt_steps,
                "backward_passes": self.backward_images, "stopped_at_noise_level_step": self.stopped_at,
                "first_misfit": self.misfits[0] if self.misfits else None,
                "last_misfit": self.misfits[-1] if self.misfits else None, "rank": self.options.rank,
                "lr": self.options.step_size, **{name: getattr(self.options, name) for name in MISFIT_OPTIONS}}
