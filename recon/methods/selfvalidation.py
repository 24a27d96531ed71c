"""Self-validation: choose per scan from the measurement itself, and calibrate the std without ground truth.

A user has no ground truth, but the measurement can stand in for it: hold out a part (``holdout.py``),
reconstruct from the rest, and see how well each candidate predicts what was held out. This module
runs those candidate reconstructions (short runs of the method with ``VALIDATION_SAMPLES`` samples on
the fit data) and decides, once per scan:

* ``prior="auto"``: the candidate prior whose reconstruction predicts the held-out data best;
* steering (``adapt="auto"``): the prior adapted to the fit data (``steering.py``) is kept only if
  it predicts the held-out data better than the unadapted one by ``GATE_MARGIN``; on anatomy a prior
  knows, adaptation gains nothing and the gate keeps the shipped weights;
* the std scale: the spread the samples predict at the held-out entries (through ``A``) against the
  residuals actually found there, net of the measurement noise; the part of the error the samples
  share is carried over from the 2-sample run to the K-sample mean (:func:`shared_error_ratio`);
  other slices of the volume measure it too (with the unadapted prior) and the median serves them all
  (:func:`over_volume`; steered, as the floor of the adapted prior's ratio); ccdf and genreg then
  multiply it by their modality's :data:`COVERAGE_FACTORS` (steered ccdf:
  :data:`STEERED_COVERAGE_FACTORS`), from the error's energy to 2-std coverage of the anatomy.

Then the method runs once on all the data with what was chosen. The held-out misfit of the chosen
candidate goes into the Result's metadata: a per-scan quality signal that needs no ground truth.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from recon.methods.adapters import merged, with_adapters
from recon.methods.holdout import Split
from recon.methods.registry import ADAPT_MODES
from recon.methods.self_training import train_adapters
from recon.methods.steering import AdaptOptions, Steering
from recon.progress import Steps

logger = logging.getLogger(__name__)

#: Samples per candidate run: two give the spread the calibration needs, at a quarter of K = 8's cost.
VALIDATION_SAMPLES = 2
#: The adapted prior is kept when its held-out misfit is below ``1 - GATE_MARGIN`` times the unadapted one's.
GATE_MARGIN = 0.02

#: The held-out std scale's factor for 2-std coverage of the anatomy, by method and modality, with an
#: unadapted prior. The held-out data make the std's mean square that of the error (a ratio of sums),
#: but coverage counts pixels one by one, and within the anatomy the error's ratio to the std is
#: larger and more spread than over the air around it: energy-matched 2-std intervals covered 77-90 %
#: of the tuning slab's anatomy with ccdf on SR x4 and MR 4x (slab means) and 97 % of its CT head;
#: genreg's restarts, 86 % of SR's, 83 % of MR's and 99 % of CT's. Each factor is the median, over the
#: slab's runs (8 slices; ccdf's each calibrated alone and by the volume, genreg's by the volume), of the factor
#: that puts a run's coverage of the object at 93.5 %, the middle of 90-97 %, rounded to 0.05
#: (``benchmarks/bench_volume_choice.py --images mri-tuning-slab`` / ``ct-tuning-slab``, with
#: ``--method genreg --volume-only`` for genreg; docs/steering.md). ``"genreg"`` holds for its
#: default (diffusion) objective; ``"genreg hard"`` and ``"genreg soft"`` for the generator objectives
#: at K = 8 on MR (medians over 7 of the MR slab's 8 slices for hard, all 8 for soft; ``--objective``),
#: hard's on SR x4 (the MR slab simulated as SR x4, all 8 slices, since 0.27.2), and soft's on SR x4
#: (the same slab, 7 of its 8 slices, since 0.27.4: it needed 2.4-5.3, and its std ranks the error
#: weakly, Spearman 0.13-0.35).
#: Steered runs have their own factors (:data:`STEERED_COVERAGE_FACTORS`); diffusion and soft
#: on CT (:data:`UNCALIBRATED_STD`) keep 1, not fitted; hard on CT keeps 1 as measured (the 8
#: held-out CT slices' anatomy covered 93.0-97.0 % in the volume's runs; docs/steering.md).
COVERAGE_FACTORS = {"ccdf": {"ct": 0.75, "mri": 1.2, "sr": 1.65},
                    "genreg": {"ct": 0.65, "mri": 1.5, "sr": 1.35},
                    "genreg hard": {"mri": 1.15, "sr": 1.8},
                    "genreg soft": {"mri": 1.3, "sr": 4.0}}
#: The same factor where the adapted prior was kept. Its std is floored by the unadapted ratios of the
#: volume's training slices (:func:`steered_error_ratio`, pooled since 0.30.0). Refitted with that floor
#: in 0.32.0 as first in 0.23.0: the pooled median, per modality, over the tuning slabs' steered runs of
#: every prior (``bench_volume_choice.py --images ... --adapt auto --own-adapt off --neighbours
#: --volume-only --prior P``, ``--method genreg`` for genreg's own adapters; docs/steering.md, "The
#: steered factors with the pooled floor"). The slabs are measured from finer images than the
#: reconstruction's grid, as a real scan is; volumes simulated on that grid (``bench_volume_steering.py
#: --scans tuning``) would need CT 0.97 and MR 0.81, and one factor per modality cannot serve both.
#: Fitted with the denoising objective, which misfit adapters share untested; genreg sampling with
#: ccdf's adapters takes genreg's factor, untested; steered hard and soft keep 1, not measured.
STEERED_COVERAGE_FACTORS = {"ccdf": {"ct": 0.75, "mri": 1.15, "sr": 1.55},
                            "genreg": {"ct": 0.6, "mri": 1.4, "sr": 1.3}}
#: Where held-out data do not calibrate a method's std, as measured: the std is scaled as everywhere else,
#: and each run says so (a warning, and ``metadata["std_calibration_warning"]``). Soft's image fits every
#: measured ray, so the held-out rays, which lie among measured ones, hardly see its error; their ratio
#: scattered from 0.55 to 313 over the CT tuning slab's 8 slices, and from 2.0 to 413 with whole views
#: held out instead (docs/steering.md, "Why soft's std is not calibrated on CT" and "Whole views held out").
#: On SR x4 likewise (since 0.27.4): with the factor fitted on the MR tuning slab (4.0; its slices needed
#: 2.4-5.3) the held-out volume's reference slice was covered 99.6 % (it needed 1.79), and the std ranks
#: the error weakly (docs/steering.md, "Soft's coverage factor on SR x4").
UNCALIBRATED_STD = {"genreg soft": {
    "ct": ("genreg's soft objective on CT: held-out rays (or views) do not calibrate its std (its 2-std intervals "
           "covered 51-92 % of the error on real CT slices; docs/steering.md); where the std map matters, use "
           "objective='hard' or method='ccdf'"),
    "sr": ("genreg's soft objective on SR: held-out pixels do not calibrate its std (with one factor its 2-std "
           "intervals covered 59-77 % of the anatomy on one volume and 99.6 % on another; docs/steering.md); "
           "where the std map matters, use objective='hard' or method='ccdf'")}}


def parse_adapt(adapt) -> tuple[str, Optional[AdaptOptions]]:
    """``(mode, options)`` from ``reconstruct``'s ``adapt``: "auto", "on", "off", a bool or a dict of options.

    ``None`` (the default) is "off"; a dict adapts with those options; its ``"mode"`` key (default "on")
    may be "auto".
    """
    if adapt is None:
        return "off", None
    if isinstance(adapt, bool):
        return ("on", AdaptOptions()) if adapt else ("off", None)
    if isinstance(adapt, str):
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {ADAPT_MODES}, a bool or a dict of options, got {adapt!r}")
        return adapt, (None if adapt == "off" else AdaptOptions())
    if isinstance(adapt, dict):
        options = dict(adapt)
        mode = options.pop("mode", "on")
        if mode not in ("auto", "on"):
            raise ValueError(f"adapt['mode'] must be 'auto' or 'on', got {mode!r}")
        return mode, AdaptOptions.parse(options)
    raise ValueError(f"adapt must be one of {ADAPT_MODES}, a bool or a dict of options, got {type(adapt).__name__}")


@dataclass
class Choice:
    """What self-validation chose, and what it measured.

    The slices of one volume share a scanner, a protocol and an anatomy, so one slice's choice
    serves them all (``reconstruct(..., choice=result.choice)``; ``recon batch`` does this per
    volume): :meth:`record` gives it as plain values and arrays to store or send to another process,
    :meth:`from_record` rebuilds it, :meth:`prior_for` applies it to the loaded prior.
    """

    prior: object  # the prior to sample with (the adapted one, merged, when steering won); None when rebuilt
    prior_label: str
    std_scale: Optional[float]  # for the K of the run that made it
    metadata: dict = field(default_factory=dict)
    error_ratio: Optional[float] = None  # shared_error_ratio (floored where adapted: steered_error_ratio); std_scale_for
    adapters: Optional[list] = None  # the kept adapters' weights (CPU tensors), in with_adapters' order
    adapt_rank: Optional[int] = None
    prior_checksum: Optional[str] = None  # of the prior the choice was made with
    method: Optional[str] = None  # the method whose runs made it (its std scale is that method's)
    options: dict = field(default_factory=dict)  # options "auto" chose on the same measurement (lambda_reg)
    start_factor: float = 1.0  # auto t0 times this with the kept adapted prior (AdaptOptions.start_factor)

    def std_scale_for(self, n_samples: int) -> Optional[float]:
        """The std scale for a mean of ``n_samples`` samples."""
        return std_scale(self.error_ratio, n_samples) if self.error_ratio is not None else self.std_scale

    def record(self) -> tuple[dict, dict]:
        """``(info, arrays)``: JSON-able values and numpy arrays that :meth:`from_record` turns back into this choice."""
        info = {"prior_label": self.prior_label, "std_scale": self.std_scale, "error_ratio": self.error_ratio,
                "metadata": self.metadata,
                "adapt_rank": self.adapt_rank, "prior_checksum": self.prior_checksum, "method": self.method,
                "options": self.options, "start_factor": self.start_factor,
                "n_adapters": len(self.adapters) if self.adapters is not None else None}
        arrays = {f"adapter_{i:03d}": t.detach().cpu().numpy() for i, t in enumerate(self.adapters or [])}
        return info, arrays

    @classmethod
    def from_record(cls, info: dict, arrays: dict) -> "Choice":
        """The choice :meth:`record` described (its ``prior`` is None: :meth:`prior_for` applies it)."""
        try:
            n = info["n_adapters"]
            adapters = None if n is None else [torch.as_tensor(arrays[f"adapter_{i:03d}"]) for i in range(n)]
            return cls(prior=None, prior_label=str(info["prior_label"]), std_scale=info["std_scale"],
                       error_ratio=info.get("error_ratio"),
                       metadata=dict(info["metadata"]), adapters=adapters, adapt_rank=info["adapt_rank"],
                       prior_checksum=info["prior_checksum"], method=info.get("method"),
                       options=dict(info.get("options") or {}), start_factor=float(info.get("start_factor", 1.0)))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a self-validation choice record: missing or bad {err}") from None

    def prior_for(self, prior):
        """``prior`` as this choice samples it: with the kept adapters folded in, else ``prior`` itself.

        ``ValueError`` when the choice was made with other weights (checksums differ) or its adapters
        do not fit ``prior``'s convolutions.
        """
        checksum = (getattr(prior, "metadata", None) or {}).get("checksum")
        if self.prior_checksum and checksum and checksum != self.prior_checksum:
            raise ValueError(f"the choice was made with prior {self.prior_label!r} (checksum {self.prior_checksum[:12]}), "
                             f"not with this one (checksum {checksum[:12]})")
        if self.adapters is None:
            return prior
        adapted, parameters = with_adapters(prior, int(self.adapt_rank))
        if len(parameters) != len(self.adapters) or any(p.shape != a.shape for p, a in zip(parameters, self.adapters)):
            raise ValueError(f"the choice's {len(self.adapters)} adapters do not fit the prior's convolutions "
                             f"({len(parameters)} adapter weights)")
        with torch.no_grad():
            for parameter, value in zip(parameters, self.adapters):
                parameter.copy_(value.to(parameter))
        return merged(adapted)


def shared_error_ratio(physics, samples: torch.Tensor, y: torch.Tensor, split: Split, noise_sigma: float
                       ) -> Optional[float]:
    """``q = c^2 / v`` at the held-out entries: the error the samples share, in units of their variance.

    Model: each sample is the truth plus an error ``e`` common to all samples (the prior's and the
    start's bias, variance ``c^2``) plus its own deviation (variance ``v``). The residual of the mean
    of ``n`` samples at a held-out entry then has ``E r^2 = c^2 + v / n + noise^2``, and ``v`` is the
    samples' variance there, so ``q = (mean r^2 - noise^2) / mean var - 1 / n`` (at least 0). ``None``
    when the samples do not differ.
    """
    predicted = physics.A(samples)
    held = split.held_out.to(predicted.dtype)
    n = samples.shape[0]
    residual = float(((predicted.mean(0, keepdim=True) - y).pow(2) * held).sum()) / split.n_held_out
    spread = float((predicted.var(0, unbiased=True, keepdim=True) * held).sum()) / split.n_held_out
    if n < 2 or not spread > 0:
        return None
    return max((residual - noise_sigma**2) / spread - 1 / n, 0.0)


def std_scale(ratio: float, n_samples: int) -> float:
    """``s`` for a mean of ``K = n_samples`` samples: ``s^2 (1 + 1/K) v = c^2 + v / K``.

    The std map is ``s sqrt(1 + 1/K)`` times the samples' std (``recon.uncertainty``), so this makes
    its mean square that of the mean's error under the model of :func:`shared_error_ratio`. For
    posterior draws the shared error is the truth's own deviation from the posterior mean, one more
    draw: ``q = 1``, and ``s = 1`` for every K.
    """
    k = int(n_samples)
    return math.sqrt((ratio + 1 / k) / (1 + 1 / k))


def calibration_scale(physics, samples: torch.Tensor, y: torch.Tensor, split: Split, noise_sigma: float,
                      n_samples: Optional[int] = None) -> Optional[float]:
    """Std scale for a mean of ``n_samples`` samples (default: as many as ``samples`` holds) from the
    held-out entries (:func:`shared_error_ratio`, :func:`std_scale`); ``None`` when the samples do not differ.

    For ``n_samples`` equal to the samples' number it is ``s^2 = (mean r^2 - noise^2) / ((1 + 1/n) mean
    var)``: if the samples were posterior draws, the held-out residual would be the spread of one more
    draw plus the noise, and ``s`` would be 1. The 2-sample calibration run predicts the error of the
    K-sample mean through the shared part, which does not shrink with K.
    """
    ratio = shared_error_ratio(physics, samples, y, split, noise_sigma)
    return None if ratio is None else std_scale(ratio, n_samples or samples.shape[0])


def coverage_factor(method: str, operator, adapted: bool, objective: str | None = None) -> float:
    """The factor on the held-out std scale for ``method`` on ``operator`` (:data:`COVERAGE_FACTORS`, or
    :data:`STEERED_COVERAGE_FACTORS` where ``adapted``): 1 for methods, objectives and modalities not
    measured and operators of unknown modality. ``objective`` is genreg's (default ``"diffusion"``);
    the others are keyed ``"genreg <objective>"``."""
    measured = (STEERED_COVERAGE_FACTORS if adapted else COVERAGE_FACTORS).get(_method_key(method, objective), {})
    return measured.get(_modality(operator), 1.0)


def calibration_warning(method: str, operator, objective: str | None = None) -> Optional[str]:
    """What to tell the user where held-out data are known not to calibrate ``method``'s std on ``operator``
    (:data:`UNCALIBRATED_STD`); None elsewhere."""
    return UNCALIBRATED_STD.get(_method_key(method, objective), {}).get(_modality(operator))


def _method_key(method: str, objective: str | None) -> str:
    """The key of the tables above: the method, or ``"genreg <objective>"`` for genreg's generator objectives."""
    return f"genreg {objective}" if method == "genreg" and (objective or "diffusion") != "diffusion" else method


def _modality(operator) -> Optional[str]:
    """``operator``'s modality ("ct", "mri", "sr"); None for a foreign operator, whose modality is not known."""
    from recon.operator_kinds import modality_of

    try:
        return modality_of(operator)
    except ValueError:
        return None


def steered_error_ratio(ratio: float, unsteered_ratio: Optional[float], unsteered: torch.Tensor,
                        steered: torch.Tensor, report: dict) -> float:
    """The adapted prior's ``q``, not below the unadapted prior's shared error: ``q >= q_u v_u / v_s``.

    The adapters learn the fit data's reconstruction, so the adapted samples agree more everywhere
    (image-space variance ``v_s`` below ``v_u``) but improve mostly what the measurement sees. The
    held-out entries are measured ones, so ``q`` fitted there shrinks while the error in what is
    never measured stays: on SR x4's tuning slice ``q`` fell from 3.1 to 1.4 and the steered std
    covered 69 % (unsteered 89 %); with this floor 87 % (docs/steering.md). ``report`` records
    both ratios and ``v_u / v_s``.
    """
    spread_ratio = float(unsteered.var(0, unbiased=True).mean() / steered.var(0, unbiased=True).mean())
    report["shared_error_ratio_unsteered"], report["spread_ratio"] = unsteered_ratio, spread_ratio
    return floored_ratio(ratio, unsteered_ratio, spread_ratio)


def floored_ratio(steered_ratio: float, unsteered_ratio: Optional[float], spread_ratio: Optional[float]) -> float:
    """``max(q_s, q_u v_u / v_s)`` (:func:`steered_error_ratio`); ``q_s`` where ``q_u`` or ``v_u / v_s``
    is missing or not finite."""
    if unsteered_ratio is None or spread_ratio is None or not math.isfinite(spread_ratio):
        return steered_ratio
    return max(steered_ratio, unsteered_ratio * spread_ratio)


def over_volume(choice: "Choice", neighbour_ratios, n_samples: int) -> "Choice":
    """``choice`` with its shared-error ratio made over the volume: the median of its own and the
    neighbours' (other slices of the volume, each from its own held-out split, with the unadapted
    prior), its std scale for a mean of ``n_samples`` samples from that.

    One slice's split holds out few entries (2 of an MRI's 22 measured outer columns), so its ``q``
    scatters from slice to slice: a 48-slice volume's coverage was its reference slice's luck (SR x4:
    84.7 % with the middle slice's scale). The slices share scanner, anatomy and prior; the median of
    their ratios put all five tuning volumes in the 90-97 % window, one slice's three
    (docs/steering.md). Neighbours without a ratio (too little to hold out, a failed run) are left out.
    Where the choice kept adapters, the unadapted ratio in its floor (:func:`steered_error_ratio`)
    is the volume's median instead of this slice's: ``max(q_s, median(q_u, neighbours) v_u / v_s)``.
    """
    own, neighbour_ratios = choice.error_ratio, list(neighbour_ratios)
    others = _usable(neighbour_ratios)
    adapted, steering = choice.adapters is not None, choice.metadata.get("steering") or {}
    spread = steering.get("spread_ratio")
    slice_ratio = steering.get("shared_error_ratio_unsteered") if adapted else own  # what the volume's median replaces
    unknown_spread = spread is None or not math.isfinite(spread)
    if own is None or slice_ratio is None or not others or (adapted and unknown_spread):
        return replace(choice, metadata={**choice.metadata, "neighbour_shared_error_ratios": neighbour_ratios})
    volume = statistics.median([slice_ratio, *others])
    ratio = floored_ratio(steering["shared_error_ratio_steered"], volume, spread) if adapted else volume
    record = {"volume_shared_error_ratio_unsteered": volume} if adapted else {}
    made = _with_ratio(choice, ratio, n_samples, shared_error_ratio_slice=own,
                       neighbour_shared_error_ratios=neighbour_ratios, **record)
    logger.info("self-validation: shared-error ratio %.3g over %d slices (this slice's %.3g); std scale %.3g",
                made.error_ratio, 1 + len(others), own, made.std_scale)
    return made


def over_splits(choice: "Choice", split_ratios, n_samples: int) -> "Choice":
    """``choice`` (an unadapted prior's) with its shared-error ratio the mean of its own split's and
    ``split_ratios`` (more held-out splits of the same measurement, each with its own fit run), its std
    scale for a mean of ``n_samples`` samples from that.

    A split holds out few entries (2 of an MRI's 22 measured outer columns) and the ratio differs from
    entry to entry, so one split's ``q`` is a skewed, scattered sample of the measurement's: the mean
    of several is the better estimate of their whole (docs/steering.md). Splits without a ratio are
    left out.
    """
    own, split_ratios = choice.error_ratio, list(split_ratios)
    ratios = [own, *_usable(split_ratios)]
    made = _with_ratio(choice, statistics.fmean(ratios), n_samples, shared_error_ratio_split=own,
                       split_shared_error_ratios=split_ratios)
    logger.info("self-validation: shared-error ratio %.3g over %d held-out splits (the first's %.3g); std scale %.3g",
                made.error_ratio, len(ratios), own, made.std_scale)
    return made


def _usable(ratios: list) -> list:
    """The ratios that were measured (not None) and are finite, as floats."""
    return [float(r) for r in ratios if r is not None and math.isfinite(float(r))]


def _with_ratio(choice: "Choice", ratio: float, n_samples: int, **record) -> "Choice":
    """``choice`` with shared-error ratio ``ratio``, its std scale for a mean of ``n_samples`` samples, and
    ``record`` beside both in its metadata."""
    scale = std_scale(ratio, n_samples)
    return replace(choice, error_ratio=ratio, std_scale=scale,
                   metadata={**choice.metadata, "shared_error_ratio": ratio, "std_scale": scale, **record})


def _steered_run(prior, samples: torch.Tensor, options: AdaptOptions, steps: int, make_denoiser: Callable,
                 make_problem: Callable, sample: Callable, relay: Callable, seed: int, precision: str,
                 score: Callable, more_images: Optional[Callable] = None) -> Steps:
    """The fit-data run with ``prior`` adapted by ``options.objective``; returns ``(adapted prior, adapter
    weights, samples, report, network images)``. ``samples``: the unadapted run's, which "denoising" trains on,
    with ``more_images(prior, adapters)``'s (steps, returning ``(N, C, H, W)`` images in the prior's units:
    other slices of the volume, reconstructed with ``prior``, adapted by ``adapters`` where not None) where
    given. Each of ``options.rounds`` trains afresh on the previous round's steered reconstructions; of
    several, the round whose samples ``score`` lowest (held-out misfit) is returned."""
    if options.objective == "denoising":
        images, images_evaluated, reports, rounds = samples.mean(0, keepdim=True), 0, [], []
        others = (yield from more_images(prior, None)).to(images) if more_images is not None else None
        for done in range(options.rounds):
            training = images if others is None else torch.cat([images, others])
            adapted, adapters, report = yield from relay(train_adapters(prior, training, options, seed, precision))
            reports.append(report)
            denoise = make_denoiser(merged(adapted))
            steered = yield from sample(make_problem(denoise), options.start_factor)
            images_evaluated += denoise.images_evaluated
            rounds.append((adapted, adapters, steered))
            if done + 1 < options.rounds:  # the next round learns from what this one reconstructs
                images = steered.mean(0, keepdim=True)
                if more_images is not None:
                    others = (yield from more_images(prior, [p.detach() for p in adapters])).to(images)
        report = {**report, "training_images": int(training.shape[0]), "start_factor": options.start_factor,
                  "rounds": options.rounds, "backward_passes": sum(r["backward_passes"] for r in reports),
                  "backward_pixels": sum(r["backward_pixels"] for r in reports)}
        best = 0
        if len(rounds) > 1:
            misfits = [score(run[2]) for run in rounds]
            best = min(range(len(misfits)), key=misfits.__getitem__)
            report.update(loss_last_steps_by_round=[r["loss_last_steps"] for r in reports],
                          heldout_misfit_by_round=misfits, round_chosen=best + 1)
        adapted, adapters, steered = rounds[best]
        return adapted, adapters, steered, report, images_evaluated
    steering = Steering(prior, options, steps, make_denoiser, seed)
    steered = yield from sample(steering.attach(make_problem(None)))
    return steering.adapted, steering.parameters, steered, steering.report(), steering.denoise.images_evaluated


def choose(*, candidates: dict, split: Split, physics, y: torch.Tensor, make_problem: Callable, sample: Callable,
           adapt_mode: str, adapt_options: Optional[AdaptOptions], steps: int, make_denoiser: Callable, seed: int,
           noise_sigma: float, calibrate: bool, n_samples: int, relay: Callable = lambda steps: steps,
           precision: str = "auto", more_images: Optional[Callable] = None) -> Steps:
    """Run the candidates on the fit data, score them on the held-out data, choose, calibrate; returns a
    :class:`Choice` (a step generator: the runs' steps pass through).

    ``make_denoiser(prior)`` wraps a prior as methods see it; ``make_problem(denoise, generator)`` builds
    the fit-data problem (fit operator, fit measurement, fit initial estimate); ``sample(problem,
    start_factor=1)`` runs the method on it (steps, returning the samples; an auto t0 times
    ``start_factor``, the adapted prior's); ``relay(steps)`` passes on other work's steps (the adapters'
    training) as one more run; ``precision`` is the network's (the training's arithmetic);
    ``more_images(prior, adapters)`` gives more images for the adapters' training (other slices of the
    volume, reconstructed with ``prior`` and, after the first of several rounds, its adapters).
    ``candidates`` maps labels to loaded priors; ``y`` is the whole mapped measurement (only its
    held-out entries are read, to score).
    """
    scores, runs, nfe, backward = {}, {}, 0, 0

    def heldout_misfit(run: torch.Tensor) -> float:
        """A run's score, the held-out misfit of its mean: the candidates', the steered run's, each round's."""
        return float(split.misfit(physics, run.mean(0, keepdim=True), y))

    for label, prior in candidates.items():
        denoise = make_denoiser(prior)
        samples = yield from sample(make_problem(denoise, torch.Generator(device=y.device).manual_seed(seed + 1)))
        scores[label] = heldout_misfit(samples)
        runs[label] = samples
        nfe += denoise.images_evaluated
    label = min(scores, key=scores.get)
    prior, samples, steering_report, kept = candidates[label], runs[label], None, False
    adapters = None
    if adapt_mode != "off":
        run = yield from _steered_run(prior, samples, adapt_options, steps, make_denoiser,
                                      lambda denoise: make_problem(denoise, torch.Generator(device=y.device).manual_seed(seed + 1)),
                                      sample, relay, seed, precision, heldout_misfit, more_images)
        adapted, adapters, steered_samples, steering_report, images = run
        steered_score = heldout_misfit(steered_samples)
        change_z = split.change_z(physics, steered_samples.mean(0, keepdim=True), samples.mean(0, keepdim=True), y)
        nfe += images
        backward += steering_report["backward_passes"]
        kept = adapt_mode == "on" or steered_score < (1 - GATE_MARGIN) * scores[label]
        steering_report = {**steering_report, "heldout_misfit_steered": steered_score,
                           "heldout_misfit_unsteered": scores[label], "heldout_change_z": change_z, "kept": kept}
        if kept:
            unsteered_samples, prior, samples = samples, merged(adapted), steered_samples
            scores[label + "+steered"] = steered_score
    chosen = label + ("+steered" if kept else "")
    ratio = shared_error_ratio(physics, samples, y, split, noise_sigma) if calibrate else None
    if kept and ratio is not None:
        steering_report["shared_error_ratio_steered"] = ratio
        ratio = steered_error_ratio(ratio, shared_error_ratio(physics, unsteered_samples, y, split, noise_sigma),
                                    unsteered_samples, samples, steering_report)
    scale = std_scale(ratio, n_samples) if ratio is not None else None
    y_power = float((y.pow(2) * split.held_out.to(y.dtype)).sum()) / split.n_held_out
    metadata = {
        "heldout_entries": split.n_held_out,
        "heldout_misfit": scores[chosen],
        "heldout_relative_rms": math.sqrt(scores[chosen] / y_power) if y_power > 0 else None,
        "heldout_rms_over_noise": math.sqrt(scores[chosen]) / noise_sigma if noise_sigma > 0 else None,
        "candidates": scores,
        "chosen": chosen,
        "steering": steering_report,
        "std_scale": scale,
        "shared_error_ratio": ratio,
        "network_images": nfe,
        "backward_images": backward,
    }
    logger.info("self-validation: held-out misfit %s -> %s; std scale %s", scores, chosen, scale)
    adapters = [p.detach().cpu().clone() for p in adapters] if kept else None
    return Choice(prior=prior, prior_label=label, std_scale=scale, error_ratio=ratio, metadata=metadata, adapters=adapters,
                  adapt_rank=adapt_options.rank if kept else None,
                  prior_checksum=(getattr(candidates[label], "metadata", None) or {}).get("checksum"),
                  start_factor=steering_report.get("start_factor", 1.0) if kept else 1.0)
