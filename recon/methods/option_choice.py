"""Options set to ``"auto"`` chosen per scan by held-out data: tv's ``lambda_tv``, genreg's weights, t0's factor.

Each candidate runs on the fit part of the data of one or more held-out splits (``holdout.py``, the same
seed for every candidate); the one whose mean predicts the held-out part best, averaged over the splits,
is used for the reconstruction from all the data (docs/steering.md). Over a volume, other slices' splits
can join the slice's own (:data:`AUTO_OPTION_SLICES`): the value serves them all.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from recon.methods import baselines, ccdf as ccdf_module, genreg as genreg_module, selfvalidation
from recon.methods.problem import Problem
from recon.progress import RunProgress, Steps

logger = logging.getLogger(__name__)

#: ``t0="validate"``: auto t0 times each factor is run on the fit data of each of ``T0_SPLITS`` held-out
#: splits; the factor whose runs predict the held-out data best, averaged over the splits, wins.
T0_FACTORS = (0.6, 1.0, 1.5)
T0_SPLITS = 3
#: Options that ``"auto"`` chooses per scan by held-out data, and their candidates (in this order when
#: several are "auto": each with those before it chosen).
AUTO_OPTIONS = {("tv", "lambda_tv"): baselines.TV_LAMBDAS,
                **{("genreg", name): values for name, values in genreg_module.OPTION_CANDIDATES.items()}}
#: Held-out splits an "auto" option's candidates are scored on, averaged (default 1). genreg's ``lambda_reg``
#: on MRI: one split of 2 outer columns chose a weight 0.8 dB below the best on average over 8 tuning
#: slices (4.0 dB on the worst), the sum over three 0.5 dB (1.7) (docs/steering.md).
AUTO_OPTION_SPLITS = {("genreg", "lambda_reg"): 3}
#: Other slices of the volume (``reconstruct``'s ``neighbours``, spread over them: :func:`spread`) whose
#: held-out data score an "auto" option's candidates beside the slice's own splits, one split each
#: (default none): the volume's slices share one value. genreg's weight on the tuning slabs (8-slice
#: volumes, each slice in turn the reference; docs/steering.md): the reference's three splits alone
#: lost 0.10-0.30 dB against the volume's best fixed weight on average (0.6-0.76 dB with the worst
#: reference), all 8 slices' splits pooled 0.00 on three of four volumes; 3 other slices were not enough.
AUTO_OPTION_SLICES = {("genreg", "lambda_reg"): 7}


def own_splits(key: tuple, beside_other_slices: bool) -> int:
    """The held-out splits of its own a slice scores ``key``'s candidates on: :data:`AUTO_OPTION_SPLITS`
    alone; beside other slices one, as each of them. The tuning slabs' replay (every slice the reference,
    seven volumes; ``benchmarks/bench_weight_choice.py --summarise``) chose the same weight with the
    reference's one split as with its three, for 10 of 50 candidate runs fewer."""
    return 1 if beside_other_slices else AUTO_OPTION_SPLITS.get(key, 1)


def auto_options(method: str, specific: dict) -> list:
    """The options of this run set to "auto", in :data:`AUTO_OPTIONS`' order. An "auto" the run does not use
    (genreg's ``lambda_reg`` with a generator objective) is removed from ``specific``: nothing to choose."""
    if method == "genreg":
        used = genreg_module.OPTIONS_OF[specific.get("objective", "diffusion")]
        for name in genreg_module.OPTION_CANDIDATES.keys() - set(used):
            if specific.get(name) == "auto":
                del specific[name]
    return [option for (name, option) in AUTO_OPTIONS if name == method and specific.get(option) == "auto"]


def choose_by_heldout(fit, physics, y: torch.Tensor, denoise, n_samples: int, candidates, run,
                       progress: RunProgress) -> Steps:
    """``(chosen, scores)``: ``run(fit_problem, candidate)`` (steps) for each candidate on the fit data (same
    seed), scored by the held-out misfit of its mean; the lowest wins."""
    split, make_problem = fit
    scores = {}
    for candidate in candidates:
        fit_problem = make_problem(denoise, torch.Generator(device=y.device).manual_seed(0), n_samples)
        samples = yield from progress.relay(run(fit_problem, candidate))
        scores[candidate] = float(split.misfit(physics, samples.mean(0, keepdim=True), y))
    return min(scores, key=scores.get), scores


def score_over_splits(fits: list, problem: Problem, physics, denoise, n_samples: int, candidates, run_on: Callable,
                       progress: RunProgress) -> Steps:
    """``(means, per_split)``: each candidate's held-out misfit averaged over the splits ``fits``, and each
    split's scores. ``run_on(index)`` is the run function for the ``index``-th split (it may keep that
    split's state, such as its own auto t0).

    One split is not enough: where its held-out entries carry little energy (outer k-space columns), a
    weak candidate (the shortest start, the smallest weight) predicts them best and loses dB on the
    image (docs/steering.md); the average is dominated by the splits that carry signal.
    """
    per_split = []
    for index, fit in enumerate(fits):
        _, scores = yield from choose_by_heldout(fit, physics, problem.y, denoise, n_samples, candidates,
                                                  run_on(index), progress)
        per_split.append({str(k): v for k, v in scores.items()})
    return mean_over_splits(candidates, per_split), per_split


def spread(n: int, count: int) -> list:
    """``count`` of the indices ``0 .. n - 1`` spread evenly over them (all of them where ``count >= n``):
    the neighbours that score an option here, a file's training slices in ``recon.batch.runner``."""
    if count <= 0:
        return []
    if count == 1:
        return [n // 2]
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(count, n))})


def mean_over_splits(candidates, per_split: list) -> dict:
    """Each candidate's held-out misfit averaged over every split of ``per_split`` (one dict of scores per
    split, keyed by the candidates' text), whichever slice held it out."""
    return {c: sum(split[str(c)] for split in per_split) / len(per_split) for c in candidates}


def choose_option(fits: list, problem: Problem, physics, specific: dict, record, option: str, prior,
                   make_denoiser: Callable, progress: RunProgress, others: list = ()) -> Steps:
    """``option="auto"``: the candidate whose runs on the fit data (one sample each) predict the held-out
    data best, averaged over the held-out splits ``fits``; returns ``(value, metadata)``.

    ``others``: other slices of the volume, each ``(fits, problem, physics, specific)``; their splits
    join this slice's, every split counting alike (:func:`mean_over_splits`): as over one slice's splits,
    the mean is dominated by the splits, and the slices, whose held-out data carry signal. One vote per
    slice (each slice's misfits relative to their mean) chose worse on the MR tuning slab with the
    ``ct`` prior (docs/steering.md, "genreg's weight over a volume's slices")."""
    denoise = make_denoiser(prior) if prior is not None else None
    candidates = AUTO_OPTIONS[(record.name, option)]

    def runs_with(options: dict) -> Callable:
        return lambda index: lambda fit_problem, value: record.run(fit_problem, **{**options, option: value})

    means, per_split = yield from score_over_splits(fits, problem, physics, denoise, 1, candidates, runs_with(specific),
                                                     progress)
    other_splits = []
    for other_fits, other_problem, other_physics, other_specific in others:
        _, splits = yield from score_over_splits(other_fits, other_problem, other_physics, denoise, 1, candidates,
                                                 runs_with(other_specific), progress)
        other_splits += splits
    scores = mean_over_splits(candidates, per_split + other_splits) if others else means
    chosen = min(scores, key=scores.get)
    logger.info("%s %s by self-validation: held-out misfit over %d split(s) and %d other slice(s) %s -> %g", record.name,
                option, len(fits), len(others), scores, chosen)
    made = {"heldout_entries": sum(split.n_held_out for split, _ in fits), "candidates": {str(k): v for k, v in means.items()},
            "per_split": per_split, "chosen": chosen, "heldout_misfit": means[chosen],
            "network_images": denoise.images_evaluated if denoise is not None else 0}
    if others:
        made.update(other_slices_per_split=other_splits, over_slices={str(k): v for k, v in scores.items()})
    return chosen, made


def choose_t0_factor(fits: list, problem: Problem, physics, specific: dict, record, prior, make_denoiser: Callable,
                      margin: float, start_factor: float, progress: RunProgress) -> Steps:
    """``t0="validate"``: the factor on auto t0 whose ccdf runs from the fit data predict the held-out data
    best, averaged over the held-out splits ``fits``; returns ``(factor, metadata)``.

    Each split's fit runs start from auto t0 of its own fit data's initial estimate (times ``start_factor``,
    an adapted prior's: ``Choice.start_factor``), times each factor;
    the chosen factor then scales auto t0 of the whole data.
    """
    denoise = make_denoiser(prior)
    bases = []  # per split: auto t0 of its fit data, found on its first fit problem

    def run_on(index: int) -> Callable:
        base = []
        bases.append(base)

        def run(fit_problem: Problem, factor: float) -> Steps:
            if not base:
                base.append(ccdf_module.auto_t0(fit_problem, margin=margin)[0] * start_factor)
            return record.run(fit_problem, **{**specific, "t0": ccdf_module.clamp_t0(base[0] * factor)})

        return run

    means, per_split = yield from score_over_splits(fits, problem, physics, denoise, selfvalidation.VALIDATION_SAMPLES,
                                                     T0_FACTORS, run_on, progress)
    starts = [{str(factor): ccdf_module.clamp_t0(base[0] * factor) for factor in T0_FACTORS} for base in bases]
    chosen = min(means, key=means.get)
    logger.info("t0 by self-validation: held-out misfit over %d splits %s -> factor %g", len(fits), means, chosen)
    return chosen, {"candidates": {str(k): v for k, v in means.items()}, "per_split": per_split, "fit_starts": starts,
                    "factor": chosen, "network_images": denoise.images_evaluated}
