"""`reconstruct`: validate, map to the prior's range, run a method over K samples, return a `Result`.

`reconstruct_steps` is the same work as a generator of ``recon.progress.Step`` s that returns the
Result; `reconstruct` runs it to the end, handing each step to its ``callback``.

Everything that can be wrong with the inputs is checked before any work starts (no operator
application beyond shape inference, no network evaluation). Then:

1. initial estimate ``A_dagger(y)`` in the user's units;
2. intensity map to the prior's range (``intensity.py``), measurement mapped through ``A``;
3. the method's starting point (``init``: the pseudo-inverse, ``"tv"``, a callable, an array or an
   earlier `Result`);
4. the method on all K samples at once (``y`` broadcast); the denoiser splits them into network calls
   of ``chunk_size`` samples, by default all K on CUDA and cache-sized chunks on the CPU
   (``batching.samples_per_call``);
5. samples mapped back to the user's units; mean, std and metadata into a `Result`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import os
import time
from dataclasses import replace
from typing import Callable, Optional, Union

import numpy as np
import torch

from recon.methods import baselines, ccdf as ccdf_module, genreg as genreg_module
from recon.methods.batching import samples_per_call
from recon.methods.checks import check_int, check_number, check_positive_int
from operators.noise import measurement_noise_sigma
from recon.methods.data_consistency import DataConsistency
from recon.methods.denoiser import CountingDenoiser, check_precision
from recon.methods import holdout, selfvalidation
from recon.methods.adapters import adaptable
from recon.methods.intensity import IntensityMap
from recon.methods.problem import Problem
from recon.methods.registry import METHODS, PRIOR_METHODS, STEERABLE_METHODS, get_method
from recon.methods.schedule import SIGMA_MAX, SIGMA_MIN
from recon.operator_kinds import default_prior
from operators.base import ReconOperator
from operators.foreign import as_operator
from recon.progress import Step, Steps, relabel, run_steps

logger = logging.getLogger(__name__)

__all__ = ["reconstruct", "reconstruct_steps", "method_options", "check_method_options", "resolve_device", "METHODS", "PRIOR_METHODS",
           "COMMON_OPTIONS", "STEERABLE_METHODS"]


#: Options handled here for every method, with their defaults.
COMMON_OPTIONS = {
    "intensity_range": "auto",  # "auto" (percentiles of A_dagger(y), lo at the operator's intensity_floor), (lo, hi), or None for identity
    "noise_sigma": None,  # measurement noise std in y's units; None: from physics.noise_model (sigma, or LogPoissonNoise and y), else 0
    "init": "fbp",  # "fbp" | "tv" | callable(y, physics) | array/tensor in y's image units | Result
    "chunk_size": None,  # samples per network call; None: all K at once on CUDA, batching.samples_per_call on the CPU
    "precision": "auto",  # network arithmetic: "auto" (bfloat16 for CPU inference where native), "float32", "bfloat16"
    "cg_iterations": 5,  # CG iterations of the data-consistency step where no closed form exists
    "use_project": True,  # use physics.project when the operator has one
    "t0_margin": None,  # auto t0: sigma(t0) = margin * estimated error; None: ccdf.default_margin (k / measurements per unknown: k = 2 within [4, 32] for exact projections, 0.09 within [0.1, 1.2] for CG)
    "calibration_splits": None,  # held-out splits whose shared-error ratios are averaged for the std scale; None: CALIBRATION_SPLITS
}

#: Held-out splits a slice calibrates its std on, where no other slices of its volume do (``neighbours``),
#: per method (default 1). genreg's restarts spread little, so one split's ratio scatters most: on its
#: tuning volumes one split's std covered 65-100 % of the error per slice, the mean over four 88-100 %
#: (docs/steering.md). Each more split costs a 2-sample run on its fit data.
CALIBRATION_SPLITS = {"genreg": 4}


def method_options(method: str) -> dict:
    """The options ``method`` accepts (beyond ``steps`` and ``t0``) and their defaults."""
    return get_method(method).options


def _pseudo_inverse(physics, y: torch.Tensor, noise_sigma) -> torch.Tensor:
    """``A_dagger(y)``, told the noise level data consistency uses (super-resolution's back-projection
    stops at the noise radius instead of fitting the noise; the other operators ignore it)."""
    return physics.A_dagger(y, noise_sigma=float(noise_sigma))


# ----------------------------------------------------------------------------------------- checks
def _split_options(method: str, options: dict, steps=None, t0=None) -> tuple[dict, dict]:
    """``(common, specific)``: the common options and all of the method's (``steps``, ``t0`` included
    where it takes them), defaults filled in, every name and value checked."""
    record = get_method(method)
    unknown = set(options) - set(record.options) - set(COMMON_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for method {method!r}; "
            f"it accepts {sorted(record.options)} and the common options {sorted(COMMON_OPTIONS)}"
        )
    common = {**COMMON_OPTIONS, **{k: v for k, v in options.items() if k in COMMON_OPTIONS}}
    specific = record.resolve({"steps": steps, "t0": t0, **{k: v for k, v in options.items() if k not in COMMON_OPTIONS}})
    if common["chunk_size"] is not None:
        check_positive_int("chunk_size", common["chunk_size"])
    check_positive_int("cg_iterations", common["cg_iterations"])
    check_precision(common["precision"])
    rng = common["intensity_range"]
    expected = f"intensity_range must be 'auto', None or (lo, hi) with lo < hi, got {rng!r}"
    if isinstance(rng, str):
        if rng != "auto":
            raise ValueError(expected)
    elif rng is not None:
        try:  # a tuple, list, array or tensor of two numbers -> a tuple of floats
            values = tuple(float(v) for v in np.asarray(rng.detach().cpu() if torch.is_tensor(rng) else rng).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError(expected) from None
        if np.ndim(rng) != 1 or len(values) != 2 or not values[1] > values[0] or not all(math.isfinite(v) for v in values):
            raise ValueError(expected)
        common["intensity_range"] = values
    init = common["init"]
    if isinstance(init, str) and init not in ("fbp", "tv"):
        raise ValueError(f"init must be 'fbp', 'tv', a callable, an array or a Result; got {init!r}")
    if common["noise_sigma"] is not None:
        common["noise_sigma"] = check_number("noise_sigma", common["noise_sigma"], 0.0)
    if common["t0_margin"] is not None:
        common["t0_margin"] = check_number("t0_margin", common["t0_margin"], 0.0, low_inclusive=False)
    if common["calibration_splits"] is None:
        common["calibration_splits"] = CALIBRATION_SPLITS.get(method, 1)
    check_positive_int("calibration_splits", common["calibration_splits"])
    if not isinstance(common["use_project"], (bool, np.bool_)):
        raise ValueError(f"use_project must be True or False, got {common['use_project']!r}")
    return common, specific


def check_method_options(method: str, options: dict, steps=None, t0=None) -> None:
    """Names and values of ``reconstruct``'s ``**options`` (and ``steps``, ``t0``) for ``method``, checked
    without running anything."""
    _split_options(method, dict(options), steps, t0)


def resolve_device(device) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU; ``ValueError`` for a device that is not here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(expected) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(expected)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r}: torch sees {count} CUDA GPU(s) here" + ("" if count else "; use 'cpu'"))
    return resolved


def _check_neighbours(neighbours, physics, y_raw: torch.Tensor, device, adapt_options, used: bool) -> list:
    """``neighbours`` (other slices) as ``(measurement, operator, noise_sigma)``: an item is a measurement
    of ``physics`` (``noise_sigma`` None: the run's) or a tuple ``(y, physics)`` / ``(y, physics, noise_sigma)``
    of a slice with its own operator. Refused where the run neither trains adapters nor calibrates its
    std on held-out data (``used`` False). [] for None."""
    if neighbours is None:
        return []
    if isinstance(neighbours, (str, bytes, np.ndarray)) or torch.is_tensor(neighbours):
        raise TypeError("neighbours must be a list of measurements (other slices), one per slice")
    try:
        items = list(neighbours)
    except TypeError:
        raise TypeError(f"neighbours must be a list of measurements, got {type(neighbours).__name__}") from None
    if not used:
        raise ValueError("neighbours train steering's adapters or calibrate the volume's std, and this run does "
                         "neither (a choice= is given, the method uses no prior, or neither steering nor "
                         "calibrate='auto' with n_samples >= 2 is on; adapt='auto' is off for a prior without "
                         "convolutions to adapt): leave neighbours unset")
    if adapt_options is not None and adapt_options.objective != "denoising":
        raise ValueError(f"neighbours: the {adapt_options.objective!r} objective trains on this slice's data alone; "
                         "use the default 'denoising' objective")
    checked = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and not 2 <= len(item) <= 3:
            raise ValueError(f"neighbours[{i}]: a tuple must be (y, physics) or (y, physics, noise_sigma), "
                             f"got {len(item)} items")
        measurement, operator, sigma = (item + (None,))[:3] if isinstance(item, tuple) else (item, None, None)
        try:
            if operator is None:
                other = _as_measurement(measurement, physics, device)
                physics.check_measurement(other)
            else:
                _check_physics(operator)
                moved = _physics_on(operator, device)
                other = _as_measurement(measurement, moved, device)
                own = as_operator(moved, other)
                own.check_measurement(other)
                if tuple(own.img_shape) != tuple(physics.img_shape):
                    raise ValueError(f"its operator's images are {tuple(own.img_shape)}, this slice's "
                                     f"{tuple(physics.img_shape)}")
            if sigma is not None:
                check_number("noise_sigma", sigma, 0.0)
        except (TypeError, ValueError) as err:
            raise type(err)(f"neighbours[{i}]: {err}") from None
        checked.append((other, operator, None if sigma is None else float(sigma)))
    return checked


def _check_physics(physics) -> None:
    """An operator has ``A``, ``A_adjoint`` and ``A_dagger`` (deepinv's ``LinearPhysics``)."""
    missing = [name for name in ("A", "A_adjoint", "A_dagger") if not callable(getattr(physics, name, None))]
    if missing:
        raise TypeError(f"physics must be a deepinv LinearPhysics (an operators.* instance), got "
                        f"{type(physics).__name__} {physics!r:.60} without {', '.join(missing)}")


def _module_on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` if it lives on ``device``, else a moved deep copy: the caller's object never changes."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    here = tensor.device if tensor is not None else torch.device("cpu")
    index = torch.cuda.current_device() if device.type == "cuda" and device.index is None else device.index
    if here.type == device.type and (here.index or 0) == (index or 0):
        return module
    return copy.deepcopy(module).to(device)


def _physics_on(physics, device: torch.device):
    """``physics`` on ``device`` (see :func:`_module_on`)."""
    if not isinstance(physics, torch.nn.Module):
        return physics
    moved = _module_on(physics, device)
    if moved is not physics and getattr(moved, "_auto_grad_adjoint_fn", None) is not None:
        moved._auto_grad_adjoint_fn = None  # deepinv 0.5 caches its autograd adjoint on the old device
    return moved


def _as_measurement(y, physics, device) -> torch.Tensor:
    """``y`` as a float tensor with a batch axis of one, finite, accepted by the operator."""
    if isinstance(y, np.ndarray):
        if np.iscomplexobj(y):
            raise TypeError("complex y: pass k-space as real and imaginary channels (deepinv's convention), not a complex array")
        if not np.issubdtype(y.dtype, np.number):
            raise TypeError(f"y must hold numbers, got an array of dtype {y.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(y)).reshape(y.shape)  # ascontiguousarray makes 0-d 1-d
    if not torch.is_tensor(y):
        raise TypeError(f"y must be a torch.Tensor or numpy array, got {type(y).__name__}")
    if y.is_complex():
        raise TypeError("complex y: pass k-space as real and imaginary channels (deepinv's convention)")
    if y.dtype == torch.bool:
        raise TypeError("y must hold numbers, got a bool array")
    if y.dim() == 0 or y.numel() == 0:
        raise ValueError(f"y must be a measurement array, got shape {tuple(y.shape)}")
    y = y.detach().to(device=device, dtype=torch.float32)
    expected = physics.measurement_shape if isinstance(physics, ReconOperator) else None  # foreign: (B, ...)
    if expected is not None and tuple(y.shape) == tuple(expected):
        y = y.unsqueeze(0)
    elif expected is None and y.dim() < 4:
        y = y.unsqueeze(0)
    if y.shape[0] != 1:
        raise ValueError(f"y must be one measurement (batch of one), got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or Inf values")
    return y


def _candidate_priors(device, image_shape, physics) -> dict:
    """``prior="auto"``: every installed built-in prior that fits the operator's images, loaded."""
    from recon.priors.loading import available_builtins, load_prior

    candidates = {}
    for name in available_builtins():
        prior = load_prior(name, device=device)
        try:
            _check_prior_fits(prior, image_shape, physics)
        except ValueError:
            continue
        candidates[name] = prior.eval()
    if not candidates:
        raise ValueError(f"prior='auto': no installed built-in prior fits images of shape {image_shape}")
    return candidates


def _description_of(physics) -> Optional[dict]:
    """The operator's geometry as plain values (``recon.geometry``), so a Result says how to rebuild it."""
    from recon.geometry import describe_operator

    description = describe_operator(physics)
    return description.to_dict() if description is not None else None


def _batch_size(y, physics) -> int:
    """B of a ``(B, *measurement_shape)`` measurement (a foreign deepinv physics: 4-D y), else 1."""
    shape = tuple(getattr(y, "shape", ()))
    if isinstance(physics, ReconOperator):
        expected = physics.measurement_shape
        return shape[0] if len(shape) == len(expected) + 1 and tuple(shape[1:]) == tuple(expected) else 1
    return shape[0] if len(shape) == 4 else 1


def _load_prior(prior, device, physics):
    if prior is None:
        prior = default_prior(physics)
    if isinstance(prior, (str, os.PathLike)):
        from recon.priors import load_prior

        prior = load_prior(prior, device=device)
    if not callable(prior):
        raise TypeError(f"prior must be a name, a path or a Prior (deepinv Denoiser), got {type(prior).__name__}")
    if isinstance(prior, torch.nn.Module):
        prior = _module_on(prior, device).eval()  # a copy when it must move; eval mode is set in place
    return prior


def _check_prior_fits(prior, image_shape, physics) -> None:
    channels = image_shape[0]
    prior_channels = int(getattr(prior, "channels", channels))
    complex_fold = physics.complex_images and channels == 2 and prior_channels == 1
    if prior_channels != channels and not complex_fold:
        raise ValueError(
            f"prior has {prior_channels} channel(s) but the operator's images have {channels} "
            f"(image shape {image_shape}); use a prior trained on {channels}-channel images"
        )


# ------------------------------------------------------------------------------------------- work
def _initial_estimate(init, y_raw, physics, imap: IntensityMap, y_mapped, base_problem: Problem, x_fbp_mapped):
    """The method's starting point in the prior's range, and a label for the metadata."""
    from recon.result import Result

    if isinstance(init, str) and init == "fbp":
        return x_fbp_mapped, "fbp"
    if isinstance(init, str) and init == "tv":
        return run_steps(baselines.tv(base_problem)), "tv"
    if isinstance(init, Result):
        x = torch.as_tensor(init.mean)
        label = f"result:{init.metadata.get('method', '?')}"
    elif callable(init):
        x = torch.as_tensor(init(y_raw, physics))
        label = f"callable:{getattr(init, '__name__', type(init).__name__)}"
    else:
        x = torch.as_tensor(np.asarray(init) if not torch.is_tensor(init) else init)
        label = "array"
    x = x.to(device=y_mapped.device, dtype=torch.float32)
    if x.dim() == x_fbp_mapped.dim() - 1:
        x = x.unsqueeze(0)
    if tuple(x.shape) != tuple(x_fbp_mapped.shape):
        raise ValueError(f"initial estimate has shape {tuple(x.shape)}, expected {tuple(x_fbp_mapped.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"initial estimate contains {int((~torch.isfinite(x)).sum())} NaN or Inf values")
    return imap.to_prior(x), label


def _fit_data(problem: Problem, physics, y_raw, imap: IntensityMap, noise_sigma_raw: float, common: dict,
              generator: torch.Generator):
    """``(split, make_problem)``: the held-out split of ``y`` and a builder of fit-data problems.

    ``make_problem(denoise, generator, n_samples)`` gives the problem on the fit part of the data,
    with its own initial estimate (the held-out values are never read).
    ``holdout.TooFewMeasurements`` when too little can be held out.
    """
    held_out = physics.held_out_entries(holdout.HOLDOUT_FRACTION, generator, like=problem.x_init).to(problem.y.device)
    if int(held_out.sum()) < holdout.MIN_HELD_OUT:
        raise holdout.TooFewMeasurements(
            f"only {int(held_out.sum())} measured values could be held out (at least {holdout.MIN_HELD_OUT} are needed "
            "to score candidates); pass calibrate=False, or fixed values instead of 'auto'")
    split = holdout.Split(held_out=held_out, fit_physics=physics.restricted(~held_out))
    y_fit = problem.y * (~held_out).to(problem.y.dtype)
    x_fit = imap.to_prior(_pseudo_inverse(physics, physics.fill_held_out(y_raw, held_out), noise_sigma_raw))

    def make_problem(denoise, generator, n_samples):
        fit_dc = DataConsistency(split.fit_physics, y_fit, problem.noise_sigma, common["cg_iterations"],
                                 common["use_project"])
        return Problem(physics=split.fit_physics, y=y_fit, x_init=x_fit, denoise=denoise, dc=fit_dc, generator=generator,
                       n_samples=n_samples, noise_sigma=problem.noise_sigma, sigma_min=problem.sigma_min, sigma_max=problem.sigma_max)

    return split, make_problem


def _self_validate(fit, problem: Problem, physics, common: dict, specific: dict, record, candidates: dict,
                   adapt_mode: str, adapt_options, make_denoiser: Callable, seed: int, calibrate: bool,
                   progress: "_RunProgress", more_images: Optional[Callable] = None) -> Steps:
    """Choose the prior (and steering) on the fit data, score on the held-out data, calibrate; returns
    a ``selfvalidation.Choice``."""
    split, make_problem = fit
    margin = None
    if isinstance(specific.get("t0"), str):
        margin = common["t0_margin"] if common["t0_margin"] is not None else ccdf_module.default_margin(problem)

    def sample(fit_problem: Problem, start_factor: float = 1.0) -> Steps:
        options = dict(specific)
        if isinstance(options.get("t0"), str):  # "auto", from the fit data's own initial estimate
            options["t0"] = ccdf_module.clamp_t0(ccdf_module.auto_t0(fit_problem, margin=margin)[0] * start_factor)
        return (yield from progress.relay(record.run(fit_problem, **options)))

    return selfvalidation.choose(candidates=candidates, split=split, physics=physics, y=problem.y,
                                 make_problem=lambda denoise, generator: make_problem(
                                     denoise, generator, selfvalidation.VALIDATION_SAMPLES),
                                 sample=sample, adapt_mode=adapt_mode, adapt_options=adapt_options,
                                 steps=int(specific.get("steps") or 1), make_denoiser=make_denoiser, seed=seed,
                                 noise_sigma=problem.noise_sigma, calibrate=calibrate, n_samples=problem.n_samples,
                                 relay=progress.relay, precision=common["precision"], more_images=more_images)


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


def _auto_options(method: str, specific: dict) -> list:
    """The options of this run set to "auto", in :data:`AUTO_OPTIONS`' order. An "auto" the run does not use
    (genreg's ``lambda_reg`` with a generator objective) is removed from ``specific``: nothing to choose."""
    if method == "genreg":
        used = genreg_module.OPTIONS_OF[specific.get("objective", "diffusion")]
        for name in genreg_module.OPTION_CANDIDATES.keys() - set(used):
            if specific.get(name) == "auto":
                del specific[name]
    return [option for (name, option) in AUTO_OPTIONS if name == method and specific.get(option) == "auto"]


def _choose_by_heldout(fit, physics, y: torch.Tensor, denoise, n_samples: int, candidates, run,
                       progress: "_RunProgress") -> Steps:
    """``(chosen, scores)``: ``run(fit_problem, candidate)`` (steps) for each candidate on the fit data (same
    seed), scored by the held-out misfit of its mean; the lowest wins."""
    split, make_problem = fit
    scores = {}
    for candidate in candidates:
        fit_problem = make_problem(denoise, torch.Generator(device=y.device).manual_seed(0), n_samples)
        samples = yield from progress.relay(run(fit_problem, candidate))
        scores[candidate] = float(split.misfit(physics, samples.mean(0, keepdim=True), y))
    return min(scores, key=scores.get), scores


def _score_over_splits(fits: list, problem: Problem, physics, denoise, n_samples: int, candidates, run_on: Callable,
                       progress: "_RunProgress") -> Steps:
    """``(means, per_split)``: each candidate's held-out misfit averaged over the splits ``fits``, and each
    split's scores. ``run_on(index)`` is the run function for the ``index``-th split (it may keep that
    split's state, such as its own auto t0).

    One split is not enough: where its held-out entries carry little energy (outer k-space columns), a
    weak candidate (the shortest start, the smallest weight) predicts them best and loses dB on the
    image (docs/steering.md); the average is dominated by the splits that carry signal.
    """
    means, per_split = dict.fromkeys(candidates, 0.0), []
    for index, fit in enumerate(fits):
        _, scores = yield from _choose_by_heldout(fit, physics, problem.y, denoise, n_samples, candidates,
                                                  run_on(index), progress)
        for candidate, score in scores.items():
            means[candidate] += score / len(fits)
        per_split.append({str(k): v for k, v in scores.items()})
    return means, per_split


def _choose_option(fits: list, problem: Problem, physics, specific: dict, record, option: str, prior,
                   make_denoiser: Callable, progress: "_RunProgress") -> Steps:
    """``option="auto"``: the candidate whose runs on the fit data (one sample each) predict the held-out
    data best, averaged over the held-out splits ``fits``; returns ``(value, metadata)``."""
    denoise = make_denoiser(prior) if prior is not None else None

    def run_on(index: int) -> Callable:
        return lambda fit_problem, value: record.run(fit_problem, **{**specific, option: value})

    means, per_split = yield from _score_over_splits(fits, problem, physics, denoise, 1,
                                                     AUTO_OPTIONS[(record.name, option)], run_on, progress)
    chosen = min(means, key=means.get)
    logger.info("%s %s by self-validation: held-out misfit over %d split(s) %s -> %g", record.name, option, len(fits),
                means, chosen)
    return chosen, {"heldout_entries": sum(split.n_held_out for split, _ in fits), "candidates": {str(k): v for k, v in means.items()},
                    "per_split": per_split, "chosen": chosen, "heldout_misfit": means[chosen],
                    "network_images": denoise.images_evaluated if denoise is not None else 0}


def _choose_t0_factor(fits: list, problem: Problem, physics, specific: dict, record, prior, make_denoiser: Callable,
                      margin: float, start_factor: float, progress: "_RunProgress") -> Steps:
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

    means, per_split = yield from _score_over_splits(fits, problem, physics, denoise, selfvalidation.VALIDATION_SAMPLES,
                                                     T0_FACTORS, run_on, progress)
    starts = [{str(factor): ccdf_module.clamp_t0(base[0] * factor) for factor in T0_FACTORS} for base in bases]
    chosen = min(means, key=means.get)
    logger.info("t0 by self-validation: held-out misfit over %d splits %s -> factor %g", len(fits), means, chosen)
    return chosen, {"candidates": {str(k): v for k, v in means.items()}, "per_split": per_split, "fit_starts": starts,
                    "factor": chosen, "network_images": denoise.images_evaluated}


class _RunProgress:
    """The steps of consecutive runs of a method (self-validation's, then the reconstruction) as one count."""

    def __init__(self, n_runs: int):
        self.n_runs, self.started, self.unit = n_runs, 0, None

    def relay(self, steps: Steps) -> Steps:
        """The next run's steps, ``(step, total)`` offset by the runs before it; each run counts as many
        steps as the first one relayed (a run of another length, such as training, is rescaled)."""
        index, self.started = self.started, self.started + 1

        def change(s: Step) -> Step:
            self.unit = self.unit or s.total
            return Step(index * self.unit + round(s.step * self.unit / s.total), self.n_runs * self.unit, s.preview)

        return relabel(steps, change)


def reconstruct(
    y,
    physics,
    method: str = "ccdf",
    prior=None,
    n_samples: int = 8,
    steps: Optional[int] = None,
    t0: Union[str, float, None] = None,
    seed: int = 0,
    device=None,
    callback=None,
    adapt=None,
    calibrate: Union[str, bool] = "auto",
    choice=None,
    neighbours=None,
    **options,
):
    """Reconstruct an image from measurement ``y`` of the linear operator ``physics``.

    Parameters
    ----------
    y : torch.Tensor or numpy.ndarray
        One measurement, ``(1, *measurement_shape)`` or without the batch axis, in any units.
    physics : deepinv.physics.LinearPhysics
        The forward operator (``operators.*`` or any deepinv linear physics).
    method : {"ccdf", "diffusion", "genreg", "tv", "fbp"}
        One of ``registry.METHODS``.
    prior : str, path or Prior, optional
        Built-in name, weights path or loaded prior; ignored by ``fbp`` and ``tv``. Default: the
        built-in prior of the operator's modality (``recon.operator_kinds.default_prior``: ct, mri,
        natural); an operator of unknown modality needs one named. ``"auto"``: the installed
        built-in prior that best predicts held-out data (``selfvalidation.py``).
    n_samples : int
        Posterior samples K, computed together (the network takes them all at once on CUDA, in cache-sized
        chunks on the CPU, or in chunks of ``chunk_size``); 1 for fbp and tv.
    steps : int, optional
        Reverse steps (network evaluations per sample) of ccdf and diffusion; default the method's
        (``registry.METHODS[method].defaults``: 20 for ccdf, 100 for diffusion). Refused for methods
        that take none.
    t0 : "auto", "validate" or float in (0, 1], optional
        CCDF start time, default "auto": picked from the initial estimate's error (see
        ``ccdf.auto_t0``). "validate": auto's start times the factor of ``T0_FACTORS`` whose runs on
        the fit data best predict held-out data over ``T0_SPLITS`` splits (9 two-sample runs); with a
        ``choice`` made with "validate", that choice's factor (one per volume in ``recon batch``).
        Not safe on MRI: on one steered MR volume it lost 1.4 dB (docs/steering.md). Refused for the
        other methods.
    seed : int
        Seed of the ``torch.Generator`` that drives all randomness.
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    callback : callable, optional
        ``callback(step, total, preview)`` (``recon.progress``); may raise ``Cancelled``.
    adapt : "off", "auto", "on", bool or dict, optional
        Steering of ccdf, diffusion and genreg (``self_training.py``, ``steering.py``): adapt the
        prior to this measurement. "auto": adapt on the fit part of the data and keep the adapted
        prior only if it predicts the held-out part better; "on": always keep it. A dict sets
        ``steering.AdaptOptions`` (its ``"mode"`` may be "auto"; genreg takes only the default
        "denoising" objective). Default "off": out of distribution steering gained 0.4 dB per slice
        on average on the real-scan benchmark, for about 15x the time of one ccdf slice (docs/steering.md).
    calibrate : "auto" or False
        "auto" (the prior methods with K >= 2): scale the std map so that the samples' spread matches
        the residuals on held-out data (no ground truth). False: the raw std of the samples.
    choice : selfvalidation.Choice, optional
        Another measurement's self-validation (``result.choice`` of an earlier call, e.g. the middle
        slice of the same volume): its prior, kept adapters and std scale are used as they are, and
        this measurement is not self-validated again (``adapt`` is then not used). ``recon batch``
        shares one choice per volume this way; an option set to "auto" that the choice settled
        (genreg's weights) takes the choice's value. A choice another method made (e.g. ccdf's, with
        steering's adapters, for genreg) gives its prior and adapters only: the std is calibrated for
        this method as without a choice.
    neighbours : sequence of measurements, optional
        Other slices of the same volume, measured by the same operator (each shaped as ``y``; or
        ``(y, physics)`` / ``(y, physics, noise_sigma)`` tuples). Steering (``adapt`` not "off", the
        default "denoising" objective) then trains one set of adapters on their first reconstructions
        (the unadapted prior, ``VALIDATION_SAMPLES`` samples each) beside this slice's, as D3IP adapts
        one prior to a whole volume; the gate and the calibration still score on this slice's held-out
        data. Without steering, or where the gate kept the shipped prior (``calibrate="auto"``, K >= 2),
        each holds out its own split (as well) and
        runs on its fit data alone, and the std scale is set by the median shared-error ratio over them
        and this slice (``selfvalidation.over_volume``): one slice's split is a noisy sample of what the
        volume's slices share; a neighbour whose run fails is left out, with a warning. ``recon batch`` passes the volume's slices this way
        (``recon.batch.runner.TRAINING_SLICES``).
    **options
        ``"auto"`` for ``lambda_tv`` (tv) or genreg's weights (``lambda_reg``, ``alpha``, ``beta``: the
        default; only those its objective uses) chooses them per scan from ``AUTO_OPTIONS`` by held-out data. Common options (``intensity_range``, ``noise_sigma``, ``init``, ``chunk_size``,
        ``cg_iterations``, ``use_project``, ``t0_margin``, ``calibration_splits``) and the method's own (see
        ``method_options(method)``).

    Returns
    -------
    recon.result.Result
        Mean, std and samples in ``y``'s image units, the initial estimate, and metadata. For a
        batch of B > 1 measurements (deepinv's convention, ``(B, *measurement_shape)``), a list of B
        Results, measurement ``i`` with seed ``seed + i``; the operator must act alike on each.

    Examples
    --------
    >>> result = reconstruct(y, physics, method="ccdf", prior="ct", n_samples=4)  # doctest: +SKIP
    >>> result.mean.shape, result.metadata["n_network_evals"]  # doctest: +SKIP
    """
    if "choice_only" in options:
        raise TypeError("reconstruct returns a Result; for the self-validation's choice alone use "
                        "reconstruct_steps(..., choice_only=True)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(step, total, preview) or None, got {type(callback).__name__}")
    return run_steps(reconstruct_steps(y, physics, method, prior, n_samples, steps, t0, seed, device, adapt, calibrate,
                                       choice, neighbours, **options), callback)


@torch.no_grad()
def reconstruct_steps(
    y,
    physics,
    method: str = "ccdf",
    prior=None,
    n_samples: int = 8,
    steps: Optional[int] = None,
    t0: Union[str, float, None] = None,
    seed: int = 0,
    device=None,
    adapt=None,
    calibrate: Union[str, bool] = "auto",
    choice=None,
    neighbours=None,
    choice_only: bool = False,
    **options,
) -> Steps:
    """:func:`reconstruct` as a generator: a ``recon.progress.Step`` per step, then the Result.

    Takes :func:`reconstruct`'s arguments but ``callback``. Yields a step for every step of the
    method (and of the self-validation runs before it), with the current estimate as ``preview``;
    returns the Result (``StopIteration.value``; a list for a batch). ``choice_only``: stop after
    self-validation and return its ``Choice`` (None where the measurement is too small to hold part
    of it out), without the reconstruction from all the data (nor ``t0="validate"``'s factor, which
    is chosen after it). Nothing is checked or run until
    the first step is asked for, and stopping is not asking for the next one: napari's
    ``thread_worker`` runs it as it is (``recon.viewer``).

    Examples
    --------
    >>> steps = reconstruct_steps(y, physics, method="ccdf")  # doctest: +SKIP
    >>> result = recon.progress.run_steps(steps, callback=lambda step, total, preview: print(step, total))  # doctest: +SKIP
    """
    from recon import __version__
    from recon.result import Result
    from recon.versions import library_versions
    from recon.uncertainty import calibrated_std_map

    batch = _batch_size(y, physics)
    if batch > 1:  # every measurement checked before the first is reconstructed
        check_int("seed", seed, 0, 2**64 - batch)
        values = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = [i for i in range(batch) if not bool(torch.isfinite(values[i]).all())]
            raise ValueError(f"y contains NaN or Inf values in measurement(s) {bad} of the batch of {batch}")
        if neighbours is not None or choice_only:
            raise ValueError("neighbours, choice_only: pass one measurement as y (the slice that self-validates), "
                             "not a batch")
        results = []
        for i in range(batch):
            results.append((yield from reconstruct_steps(y[i : i + 1], physics, method, prior, n_samples, steps, t0, seed + i,
                                                         device, adapt, calibrate, choice, **options)))
        return results
    started = time.perf_counter()
    record = get_method(method)
    n_samples = check_positive_int("n_samples", n_samples)
    seed = check_int("seed", seed, 0, 2**64 - 1)  # torch.Generator's range
    common, specific = _split_options(method, options, steps, t0)
    device = resolve_device(device)
    _check_physics(physics)
    steerable = method in STEERABLE_METHODS
    adapt_mode, adapt_options = selfvalidation.parse_adapt(adapt if steerable or adapt not in (None, "off", False) else "off")
    if not steerable and adapt_mode != "off":
        raise ValueError(f"adapt={adapt!r}: only {sorted(STEERABLE_METHODS)} adapt the prior; leave adapt unset for {method!r}")
    if adapt_options is not None and adapt_options.objective == "misfit" and not record.steers_while_sampling:
        raise ValueError(f"adapt objective 'misfit' adapts while sampling, which {method!r} does not do; "
                         "use the default objective 'denoising'")
    if calibrate not in ("auto", False):
        raise ValueError(f"calibrate must be 'auto' or False, got {calibrate!r}")
    auto_prior = isinstance(prior, str) and prior == "auto"
    if auto_prior and not record.uses_prior:
        raise ValueError(f"prior='auto': method {method!r} uses no prior")
    given = physics
    physics = _physics_on(physics, device)
    y_raw = _as_measurement(y, physics, device)
    physics = as_operator(physics, y_raw)  # a foreign deepinv physics gets the operator contract's defaults
    physics.check_measurement(y_raw)
    image_shape = tuple(physics.img_shape)
    uses_prior = record.uses_prior
    loaded_prior = None
    candidates = None
    if auto_prior:
        candidates = _candidate_priors(device, image_shape, physics)
        loaded_prior = next(iter(candidates.values()))
    elif uses_prior:
        loaded_prior = _load_prior(prior, device, given)
        _check_prior_fits(loaded_prior, image_shape, physics)
    else:
        n_samples = 1
    if choice is not None:  # another measurement's self-validation, applied as it is
        if not isinstance(choice, selfvalidation.Choice):
            raise TypeError(f"choice must be a Result's choice (recon.methods.selfvalidation.Choice), got {type(choice).__name__}")
        if not uses_prior:
            raise ValueError(f"choice: method {method!r} uses no prior")
        if candidates is not None:
            if choice.prior_label not in candidates:
                raise ValueError(f"choice: it chose prior {choice.prior_label!r}, which is not installed here "
                                 f"(candidates {sorted(candidates)})")
            prior_meta_source = candidates[choice.prior_label]
        else:
            prior_meta_source = loaded_prior
        loaded_prior = choice.prior_for(prior_meta_source)
        adapt_mode, adapt_options = ("choice" if choice.adapters else "off"), None
    inherited = None  # a choice another method made: its prior and adapters, with this method's own calibration
    if choice is not None and choice.method not in (None, method):
        inherited, choice, candidates, auto_prior = choice, None, None, False
    if adapt_mode not in ("off", "choice") and not all(adaptable(p) for p in (candidates or {"": loaded_prior}).values()):
        if adapt_mode == "on":
            raise ValueError(f"adapt='on': prior {type(loaded_prior).__name__} has no Conv2d layers for adapters; "
                             "use adapt='off'")
        adapt_mode, adapt_options = "off", None  # "auto" on a prior that cannot adapt: nothing to decide
    if inherited is not None:
        adapt_mode = "off"  # the adapters came with the prior; this method calibrates for itself
    validate = uses_prior and choice is None and (adapt_mode != "off" or (calibrate == "auto" and n_samples >= 2)
                                                  or auto_prior)
    neighbours = _check_neighbours(neighbours, physics, y_raw, device, adapt_options,
                                   validate and (adapt_mode != "off" or (calibrate == "auto" and n_samples >= 2)))
    if neighbours:  # neighbour i runs with seed + 1 + i
        check_int("seed", seed, 0, 2**64 - 1 - len(neighbours))
    if choice_only and not validate:
        raise ValueError("choice_only: this run makes no choice (a choice= is given, or the method uses no prior, "
                         "or neither adapt, prior='auto' nor calibrate='auto' with K >= 2 is set)")

    # ---- work starts here (no gradients: the decorator keeps them off across yields)
    noise_sigma_raw = measurement_noise_sigma(physics, y_raw) if common["noise_sigma"] is None else float(common["noise_sigma"])
    x_fbp_raw = _pseudo_inverse(physics, y_raw, noise_sigma_raw)
    if not bool(torch.isfinite(x_fbp_raw).all()):
        raise ValueError(f"the pseudo-inverse of y ({type(physics).__name__}.A_dagger) has NaN or Inf values "
                         f"(largest |y| {float(y_raw.abs().max()):.3g}); check the operator's geometry and y's scale")
    is_complex = physics.complex_images
    if common["intensity_range"] == "auto":
        imap = IntensityMap.from_estimate(x_fbp_raw, complex_images=is_complex,
                                          floor=physics.intensity_floor)
    elif common["intensity_range"] is None:
        imap = IntensityMap(0.0, 1.0, source="identity")
    else:
        imap = IntensityMap(float(common["intensity_range"][0]), float(common["intensity_range"][1]), is_complex,
                            source="user")
    y_mapped = imap.measurement_to_prior(physics, y_raw, image_shape)
    noise_sigma = noise_sigma_raw / imap.scale
    generator = torch.Generator(device=device).manual_seed(seed)
    make_denoiser = functools.partial(CountingDenoiser, image_channels=image_shape[0], chunk_size=common["chunk_size"],
                                      precision=common["precision"])
    denoise = make_denoiser(loaded_prior) if uses_prior else None
    prior_meta = dict(getattr(loaded_prior, "metadata", {}) or {}) if uses_prior else {}
    if choice is not None or inherited is not None:
        prior_meta = dict(getattr(prior_meta_source, "metadata", {}) or {})
    dc = DataConsistency(physics, y_mapped, noise_sigma, common["cg_iterations"], common["use_project"])
    if adapt_options is not None:  # the training's floor follows the data-consistency step
        adapt_options = adapt_options.for_operator(dc.closed_form)
    problem = Problem(
        physics=physics,
        y=y_mapped,
        x_init=imap.to_prior(x_fbp_raw),
        denoise=denoise,
        dc=dc,
        generator=generator,
        n_samples=n_samples,
        noise_sigma=noise_sigma,
        sigma_min=float(prior_meta.get("sigma_min", SIGMA_MIN)),
        sigma_max=float(prior_meta.get("sigma_max", SIGMA_MAX)),
    )
    x_init, init_label = _initial_estimate(common["init"], y_raw, physics, imap, y_mapped,
                                           replace(problem, n_samples=1), problem.x_init)
    problem = replace(problem, x_init=x_init)

    extra = {"self_validation": {**choice.metadata, "shared": True}} if choice is not None else {}
    t0_requested = specific.get("t0")
    std_scale = None
    if choice is not None and calibrate == "auto" and n_samples >= 2:
        std_scale = choice.std_scale_for(n_samples)
        if std_scale is None:
            logger.warning("the choice holds no std scale (it was made with K = 1 or calibrate=False): "
                           "the std is the samples' raw spread")
    # a steered run, the training, and the neighbours' first runs; unsteered, the neighbours' calibration runs
    adapt_runs = 0 if adapt_options is None else 1 + (adapt_options.objective == "denoising") + len(neighbours)
    more_splits = common["calibration_splits"] - 1 if calibrate == "auto" and n_samples >= 2 and not neighbours else 0
    calibration_runs = (len(neighbours) + more_splits) if adapt_mode == "off" else 0
    self_validation_runs = (len(candidates or {None: 0}) + adapt_runs + calibration_runs) if validate else 0
    shared_t0_factor = choice.options.get("t0_factor") if choice is not None else None  # the volume's start
    validation_runs = self_validation_runs + (len(T0_FACTORS) * T0_SPLITS
                                              if t0_requested == "validate" and shared_t0_factor is None
                                              and not choice_only else 0)
    auto_options = _auto_options(method, specific)
    if choice is not None:  # chosen once for the volume
        for option in [option for option in auto_options if option in choice.options]:
            specific[option] = choice.options[option]
            auto_options.remove(option)
    validation_runs += sum(len(AUTO_OPTIONS[(method, option)]) * AUTO_OPTION_SPLITS.get((method, option), 1)
                           for option in auto_options)
    progress = _RunProgress(validation_runs + (0 if choice_only else 1))
    fits = {}  # the held-out splits and their fit-data problems, each made once when first needed
    validation_images = 0  # network images this call's self-validation runs evaluate, all stages together

    def fit_data(index: int = 0):
        if index not in fits:
            fits[index] = _fit_data(problem, physics, y_raw, imap, noise_sigma_raw, common,
                                    torch.Generator(device=device).manual_seed(holdout.split_seed(seed, index)))
        return fits[index]

    def fit_splits(count: int, runs_each: int) -> list:
        """Split 0 and up to ``count - 1`` more; a further split that holds out too little (entries are held
        out at random) is left out, with its ``runs_each`` runs taken off the progress count."""
        made = [fit_data(0)]
        for index in range(1, count):
            try:
                made.append(fit_data(index))
            except holdout.TooFewMeasurements as err:
                logger.warning("held-out split %d left out: %s", index, err)
                progress.n_runs -= runs_each
        return made

    chosen_options = {}
    for i, option in enumerate(auto_options):
        later = {name: record.run_default(name) for name in auto_options[i + 1:]}  # still "auto": run's default meanwhile
        specific[option], extra["self_validation"] = yield from _choose_option(
            fit_splits(AUTO_OPTION_SPLITS.get((method, option), 1), len(AUTO_OPTIONS[(method, option)])), problem, physics,
            {**specific, **later}, record, option, loaded_prior, make_denoiser, progress)
        chosen_options[option] = specific[option]
        validation_images += extra["self_validation"]["network_images"]
        extra.setdefault("auto_options", {})[option] = extra["self_validation"]  # kept when calibration's record follows
    if validate:
        def neighbour_runs(prior, tolerant: bool = False, **how) -> Steps:
            """Each neighbour's short run with the unadapted ``prior`` (``VALIDATION_SAMPLES`` samples, seed
            ``seed + 1 + i``, this run's options and chosen options); ``how``: ``calibrate``, ``choice_only``.
            ``tolerant``: a neighbour whose run fails (``ValueError``) gives None instead of failing this run."""
            made = []
            for i, (y_other, operator, sigma) in enumerate(neighbours):
                own = {"noise_sigma": sigma} if sigma is not None else {}
                try:
                    made.append((yield from progress.relay(reconstruct_steps(
                        y_other, given if operator is None else operator, method, prior,
                        selfvalidation.VALIDATION_SAMPLES, steps, "auto" if t0_requested == "validate" else t0,
                        seed + 1 + i, device, "off", **{**options, **chosen_options, **own, **how}))))
                except ValueError as err:
                    if not tolerant:
                        raise
                    logger.warning("neighbours[%d] left out: %s", i, err)
                    made.append(None)
            return made

        def neighbour_images(prior) -> Steps:
            """First reconstructions of the neighbours with the unadapted ``prior``, in the prior's units."""
            nonlocal validation_images
            images = []
            for first in (yield from neighbour_runs(prior, calibrate=False)):
                lo, hi = first.metadata["intensity_range"]
                validation_images += round(first.metadata["n_network_evals"] * selfvalidation.VALIDATION_SAMPLES * denoise.fold)
                images.append(IntensityMap(lo, hi, is_complex).to_prior(torch.as_tensor(first.mean)[None].to(device)))
            return torch.cat(images)

        def neighbour_ratios(prior) -> Steps:
            """The neighbours' shared-error ratios with the unadapted ``prior``, each from its own held-out
            split and fit run alone (None where a neighbour cannot hold part of its data out)."""
            nonlocal validation_images
            made = yield from neighbour_runs(prior, tolerant=True, calibrate="auto", choice_only=True, calibration_splits=1)
            validation_images += sum(other.metadata["network_images"] for other in made if other is not None)
            ratios = [None if other is None else other.error_ratio for other in made]
            if None in ratios:
                logger.warning("%d of %d neighbours gave no shared-error ratio (too little to hold out, samples "
                               "that do not differ, or a failed run); the volume's ratio is made without them",
                               ratios.count(None), len(ratios))
            return ratios

        def split_ratios(label: str, prior) -> Steps:
            """This measurement's shared-error ratios with the unadapted ``prior`` on its held-out splits 1,
            2, ... (split 0 is the choice's own), each from its own fit run."""
            nonlocal validation_images
            ratios = []
            for fit in fit_splits(common["calibration_splits"], 1)[1:]:
                other = yield from _self_validate(fit, problem, physics, common, specific, record, {label: prior},
                                                  "off", None, make_denoiser, seed, True, progress)
                validation_images += other.metadata["network_images"]
                ratios.append(other.error_ratio)
            return ratios

        try:
            choice = yield from _self_validate(
                fit_data(), problem, physics, common, specific, record,
                candidates or {prior_meta.get("name", "prior"): loaded_prior}, adapt_mode, adapt_options,
                make_denoiser, seed, calibrate == "auto" and n_samples >= 2, progress,
                neighbour_images if neighbours else None)
        except holdout.TooFewMeasurements:
            if adapt_mode != "off" or auto_prior:
                raise
            logger.warning("the measurement is too small to hold part of it out: the std is not calibrated")
            progress.n_runs -= self_validation_runs
        else:
            more_ratios = len(neighbours) or more_splits  # the volume's other slices, else more splits of this one
            if more_ratios and choice.adapters is None:  # unsteered, or the gate kept the shipped prior
                progress.n_runs += more_ratios if adapt_mode != "off" else 0  # counted up front only where adapt is off
                if choice.error_ratio is None:  # calibration off, or samples that do not differ: nothing to pool
                    logger.info("no shared-error ratio at the held-out data: no other ratios are measured")
                    progress.n_runs -= more_ratios
                elif neighbours:  # the volume's ratio, not this slice's alone
                    choice = selfvalidation.over_volume(choice, (yield from neighbour_ratios(choice.prior)), n_samples)
                else:
                    choice = selfvalidation.over_splits(choice, (yield from split_ratios(choice.prior_label, choice.prior)),
                                                        n_samples)
            loaded_prior, std_scale = choice.prior, choice.std_scale
            denoise = make_denoiser(loaded_prior)
            problem = replace(problem, denoise=denoise)
            prior_meta = dict(getattr(candidates[choice.prior_label], "metadata", {}) or {}) if candidates else prior_meta
            extra["self_validation"] = choice.metadata
            validation_images += choice.metadata["network_images"]
            choice = replace(choice, prior=None, method=method, options=chosen_options)  # without the network: Result.choice
            if inherited is not None:
                choice = replace(choice, prior_label=inherited.prior_label, adapters=inherited.adapters,
                                 adapt_rank=inherited.adapt_rank, prior_checksum=inherited.prior_checksum)
    if choice_only:
        return choice
    if inherited is not None:
        extra["prior_from_choice_of"] = inherited.method
    if isinstance(t0_requested, str):  # "auto", or "validate": auto's start scaled by held-out data
        specific["t0"], extra["estimated_initial_error"], extra["t0_margin"] = ccdf_module.auto_t0(
            problem, margin=common["t0_margin"]
        )
        start_factor = (choice or inherited).start_factor if (choice or inherited) is not None else 1.0
        if start_factor != 1.0:  # a kept adapted prior starts from more noise (AdaptOptions.start_factor)
            specific["t0"] = ccdf_module.clamp_t0(specific["t0"] * start_factor)
            extra["t0_start_factor"] = start_factor
        if t0_requested == "validate":
            if shared_t0_factor is not None:  # chosen once for the volume
                factor, extra["t0_validation"] = shared_t0_factor, {"factor": shared_t0_factor, "shared": True}
            else:
                factor, extra["t0_validation"] = yield from _choose_t0_factor(
                    fit_splits(T0_SPLITS, len(T0_FACTORS)), problem, physics, specific, record, loaded_prior,
                    make_denoiser, extra["t0_margin"], start_factor, progress)
                validation_images += extra["t0_validation"]["network_images"]
                if validate and choice is not None:  # this run's own choice: the volume's other slices take its factor
                    choice = replace(choice, options={**choice.options, "t0_factor": factor})
            specific["t0"] = ccdf_module.clamp_t0(specific["t0"] * factor)

    samples = imap.from_prior((yield from progress.relay(record.run(problem, **specific))))

    samples_np = samples.detach().cpu().numpy().astype(np.float32)
    held_out_scale, coverage = std_scale, None
    if std_scale is not None:  # the energy match, then the factor that makes it a 2-std coverage
        adapted = any(c is not None and bool(c.adapters) for c in (choice, inherited))
        coverage = selfvalidation.coverage_factor(method, given, adapted, specific.get("objective"))
        std_scale = held_out_scale * coverage
    metadata = {
        "method": method,
        "n_samples": n_samples,
        "chunk_size": min(common["chunk_size"] or samples_per_call(device, image_shape, n_samples), n_samples),
        "steps": specific.get("steps"),
        "t0": specific.get("t0"),
        "t0_requested": t0_requested,
        "seed": seed,
        "device": str(device),
        "parameters": {**{k: _jsonable(v) for k, v in common.items()}, **{k: _jsonable(v) for k, v in specific.items()}},
        "init": init_label,
        "intensity_range": [imap.lo, imap.hi],
        "intensity_range_source": imap.source,
        "noise_sigma": noise_sigma_raw,
        "data_consistency": dc.kind,
        "network_precision": ("+".join(sorted(denoise.precisions_used)) or None) if denoise is not None else None,
        "operator": type(given).__name__,
        "operator_description": _description_of(physics),
        "image_shape": list(image_shape),
        "n_network_evals": denoise.per_sample(n_samples) if denoise is not None else 0,
        "validation_network_images": validation_images,
        "prior_name": prior_meta.get("name", type(loaded_prior).__name__) if uses_prior else None,
        "prior_checksum": prior_meta.get("checksum") if uses_prior else None,
        "version": __version__,
        "libraries": library_versions(),
        "adapt": adapt_mode,
        "std_scale": std_scale,
        "std_scale_held_out": held_out_scale,
        "coverage_factor": coverage,
        "std_calibration": "held-out measurements" if std_scale is not None else "none",
        **extra,
    }
    metadata["wall_time_s"] = time.perf_counter() - started
    mean, std = samples_np.mean(0, dtype=np.float64).astype(np.float32), calibrated_std_map(samples_np, std_scale)
    bad = [name for name, a in (("samples", samples_np), ("mean", mean), ("std", std)) if not np.isfinite(a).all()]
    if bad:  # never hand back NaN or Inf as if it were an image
        raise ValueError(f"the {method} reconstruction has NaN or Inf values in {', '.join(bad)} (largest |y| "
                         f"{float(y_raw.abs().max()):.3g}); check the options and that y's scale fits float32")
    return Result(
        mean=mean,
        std=std,
        samples=samples_np,
        initial=imap.from_prior(x_init)[0].detach().cpu().numpy(),
        metadata=metadata,
        choice=choice,
    )


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return getattr(value, "__name__", type(value).__name__)
