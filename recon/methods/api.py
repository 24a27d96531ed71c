"""`reconstruct`: validate, map to the prior's range, run a method over K samples, return a `Result`.

`reconstruct_steps` is the same work as a generator of ``recon.progress.Step`` s that returns the
Result; `reconstruct` runs it to the end, handing each step to its ``callback``.

Everything that can be wrong with the inputs is checked before any work starts (``arguments.py``:
no operator application beyond shape inference, no network evaluation). Then:

1. initial estimate ``A_dagger(y)`` in the user's units;
2. intensity map to the prior's range (``intensity.py``), measurement mapped through ``A``;
3. the method's starting point (``init``: the pseudo-inverse, ``"tv"``, a callable, an array or an
   earlier `Result`);
4. the method on all K samples at once (``y`` broadcast); the denoiser splits them into network calls
   of ``chunk_size`` samples, by default all K on CUDA and cache-sized chunks on the CPU
   (``batching.samples_per_call``);
5. samples mapped back to the user's units; mean, std and metadata into a `Result`.

Between 3 and 4, where they are on: options set to "auto" chosen on held-out data (``option_choice.py``),
self-validation of the prior, steering and std scale (``selfvalidation.py``), and t0. `_Reconstruction`
holds one measurement's run, a method per phase.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from typing import Callable, Optional, Union

import numpy as np
import torch

from operators.foreign import as_operator
from operators.noise import measurement_noise_sigma
from recon.methods import baselines, ccdf as ccdf_module, holdout, option_choice, selfvalidation
from recon.methods.adapters import adaptable
from recon.methods.arguments import (COMMON_OPTIONS, as_measurement, batch_size, candidate_priors, check_method_options,
                                     check_neighbours, check_physics, check_prior_fits, method_options, physics_on,
                                     resolve_device, resolve_prior, split_options)
from recon.methods.batching import samples_per_call
from recon.methods.checks import check_int, check_positive_int
from recon.methods.data_consistency import DataConsistency
from recon.methods.denoiser import CountingDenoiser
from recon.methods.intensity import IntensityMap
from recon.methods.problem import Problem
from recon.methods.registry import METHODS, PRIOR_METHODS, STEERABLE_METHODS, check_prior_use, get_method
from recon.methods.schedule import SIGMA_MAX, SIGMA_MIN
from recon.progress import RunProgress, Steps, run_steps

logger = logging.getLogger(__name__)

__all__ = ["reconstruct", "reconstruct_steps", "method_options", "check_method_options", "resolve_device", "METHODS", "PRIOR_METHODS",
           "COMMON_OPTIONS", "STEERABLE_METHODS"]


def _pseudo_inverse(physics, y: torch.Tensor, noise_sigma) -> torch.Tensor:
    """``A_dagger(y)``, told the noise level data consistency uses (super-resolution's back-projection
    stops at the noise radius instead of fitting the noise; the other operators ignore it)."""
    return physics.A_dagger(y, noise_sigma=float(noise_sigma))


def _description_of(physics) -> Optional[dict]:
    """The operator's geometry as plain values (``recon.geometry``), so a Result says how to rebuild it."""
    from recon.geometry import describe_operator

    description = describe_operator(physics)
    return description.to_dict() if description is not None else None


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
        made = init(y_raw, physics)
        label = f"callable:{getattr(init, '__name__', type(init).__name__)}"
        if not (torch.is_tensor(made) or isinstance(made, np.ndarray)):
            raise TypeError(f"init {label} returned {type(made).__name__}, not an image (tensor or array)")
        x = torch.as_tensor(made)
    else:
        try:
            x = torch.as_tensor(np.asarray(init, dtype=np.float32) if not torch.is_tensor(init) else init)
        except (TypeError, ValueError) as err:
            raise TypeError(f"init must be 'fbp', 'tv', a callable, an array or a Result; got {type(init).__name__} "
                            f"({err})") from None
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
        Built-in name, weights path or loaded prior; refused for ``fbp`` and ``tv``, which use none. Default: the
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
        ``ccdf.auto_t0``). "validate": auto's start times the factor of ``option_choice.T0_FACTORS`` whose runs on
        the fit data best predict held-out data over ``option_choice.T0_SPLITS`` splits (9 two-sample runs); with a
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
        one prior to a whole volume; the gate scores on this slice's held-out data. With
        ``calibrate="auto"`` (K >= 2) each also holds out its own split and runs on its fit data alone
        (the unadapted prior), and the std scale is set by the median shared-error ratio over them and
        this slice (``selfvalidation.over_volume``; where adapters were kept, the unadapted ratio in
        the steered std's floor, since 0.30.0): one slice's split is a noisy sample of what the
        volume's slices share; a neighbour whose run fails is left out, with a warning. genreg's
        ``lambda_reg="auto"`` is scored on one held-out split of each of up to 7 of them too, and on
        one of this slice's (three alone; ``option_choice.AUTO_OPTION_SLICES``, ``own_splits``).
        ``recon batch`` and ``reconstruct_volume`` pass the volume's slices this way (``recon.methods.volume.TRAINING_SLICES``).
    **options
        ``"auto"`` for ``lambda_tv`` (tv) or genreg's weights (``lambda_reg``, ``alpha``, ``beta``: the
        default; only those its objective uses) chooses them per scan from ``option_choice.AUTO_OPTIONS`` by held-out data. Common options (``intensity_range``, ``noise_sigma``, ``init``, ``chunk_size``,
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
    batch = batch_size(y, physics)
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
    run = _Reconstruction(y, physics, method, prior, n_samples, steps, t0, seed, device, adapt, calibrate, choice,
                          neighbours, choice_only, options)
    return (yield from run.execute())


class _Reconstruction:
    """One measurement's reconstruction, phase by phase.

    ``__init__`` checks every argument and settles what the run will do, before any work (the checked
    arguments, the prior, a shared ``choice``, ``adapt_mode``, whether it ``validate`` s); :meth:`execute`
    then runs the phases: ``_set_up`` (intensity map, ``problem``, ``extra`` metadata), the "auto" options
    to choose (those a shared choice settled taken from it) and the runs to count (``progress``), each option's choice, self-validation (``choice``,
    ``std_scale``, a steered ``problem``), the start time, the method's run and the Result.
    """

    def __init__(self, y, physics, method, prior, n_samples, steps, t0, seed, device, adapt, calibrate, choice,
                 neighbours, choice_only, options):
        self.started = time.perf_counter()
        self.method, self.steps, self.t0, self.options, self.choice_only = method, steps, t0, options, choice_only
        self.record = record = get_method(method)
        check_prior_use(method, prior)
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.seed = seed = check_int("seed", seed, 0, 2**64 - 1)  # torch.Generator's range
        self.common, self.specific = split_options(method, options, steps, t0)
        self.device = device = resolve_device(device)
        check_physics(physics)
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
        self.given = physics
        physics = physics_on(physics, device)
        self.y_raw = as_measurement(y, physics, device)
        self.physics = physics = as_operator(physics, self.y_raw)  # a foreign deepinv physics gets the operator contract's defaults
        physics.check_measurement(self.y_raw)
        self.image_shape = tuple(physics.img_shape)
        self.uses_prior = record.uses_prior
        self.loaded_prior, self.candidates, self.prior_meta_source = None, None, None
        if auto_prior:
            self.candidates = candidate_priors(device, self.image_shape, physics)
            self.loaded_prior = next(iter(self.candidates.values()))
        elif self.uses_prior:
            self.loaded_prior = resolve_prior(prior, device, self.given)
            check_prior_fits(self.loaded_prior, self.image_shape, physics)
        else:
            self.n_samples = 1
        if choice is not None:  # another measurement's self-validation, applied as it is
            adapt_mode, adapt_options = self._take_choice(choice)
        self.inherited = None  # a choice another method made: its prior and adapters, with this method's own calibration
        if choice is not None and choice.method not in (None, method):
            self.inherited, choice, self.candidates, auto_prior = choice, None, None, False
        self.choice, self.auto_prior = choice, auto_prior
        priors = (self.candidates or {"": self.loaded_prior}).values()
        if adapt_mode not in ("off", "choice") and not all(adaptable(p) for p in priors):
            if adapt_mode == "on":
                raise ValueError(f"adapt='on': prior {type(self.loaded_prior).__name__} has no Conv2d layers for adapters; "
                                 "use adapt='off'")
            adapt_mode, adapt_options = "off", None  # "auto" on a prior that cannot adapt: nothing to decide
        if self.inherited is not None:
            adapt_mode = "off"  # the adapters came with the prior; this method calibrates for itself
        self.adapt_mode, self.adapt_options = adapt_mode, adapt_options
        self.calibrates = calibrate == "auto" and self.n_samples >= 2
        self.validate = self.uses_prior and choice is None and (adapt_mode != "off" or self.calibrates or auto_prior)
        self.neighbours = check_neighbours(neighbours, physics, device, adapt_options,
                                           self.validate and (adapt_mode != "off" or self.calibrates))
        if self.neighbours:  # neighbour i runs with seed + 1 + i
            check_int("seed", seed, 0, 2**64 - 1 - len(self.neighbours))
        if choice_only and not self.validate:
            raise ValueError("choice_only: this run makes no choice (a choice= is given, or the method uses no prior, "
                             "or neither adapt, prior='auto' nor calibrate='auto' with K >= 2 is set)")

    def _take_choice(self, choice) -> tuple:
        """Check another measurement's ``choice`` and take its prior; returns the adapt mode and options it sets."""
        if not isinstance(choice, selfvalidation.Choice):
            raise TypeError(f"choice must be a Result's choice (recon.methods.selfvalidation.Choice), got {type(choice).__name__}")
        if not self.uses_prior:
            raise ValueError(f"choice: method {self.method!r} uses no prior")
        if self.candidates is not None:
            if choice.prior_label not in self.candidates:
                raise ValueError(f"choice: it chose prior {choice.prior_label!r}, which is not installed here "
                                 f"(candidates {sorted(self.candidates)})")
            self.prior_meta_source = self.candidates[choice.prior_label]
        else:
            self.prior_meta_source = self.loaded_prior
        self.loaded_prior = choice.prior_for(self.prior_meta_source)
        return ("choice" if choice.adapters else "off"), None

    # ---------------------------------------------------------------------------------- the work
    def execute(self) -> Steps:
        """The phases in order; returns the Result (the Choice with ``choice_only``)."""
        self._set_up()
        self._settle_auto_options()
        self._count_runs()
        for i, option in enumerate(self.auto_options):
            yield from self._choose_option(option, later=self.auto_options[i + 1:])
        if self.validate:
            yield from self._self_validate()
        if self.choice_only:
            return self.choice
        if self.inherited is not None:
            self.extra["prior_from_choice_of"] = self.inherited.method
        if isinstance(self.t0_requested, str):  # "auto", or "validate": auto's start scaled by held-out data
            yield from self._choose_t0()
        samples = self.imap.from_prior((yield from self.progress.relay(self.record.run(self.problem, **self.specific))))
        return self._result(samples)

    def _set_up(self) -> None:
        """Initial estimate, intensity map, data consistency, denoiser and the Problem of all K samples."""
        common, physics, y_raw, device = self.common, self.physics, self.y_raw, self.device
        self.noise_sigma_raw = (measurement_noise_sigma(physics, y_raw) if common["noise_sigma"] is None
                                else float(common["noise_sigma"]))
        x_fbp_raw = _pseudo_inverse(physics, y_raw, self.noise_sigma_raw)
        if not bool(torch.isfinite(x_fbp_raw).all()):
            raise ValueError(f"the pseudo-inverse of y ({type(physics).__name__}.A_dagger) has NaN or Inf values "
                             f"(largest |y| {float(y_raw.abs().max()):.3g}); check the operator's geometry and y's scale")
        self.imap = _intensity_map(common["intensity_range"], x_fbp_raw, physics)
        y_mapped = self.imap.measurement_to_prior(physics, y_raw, self.image_shape)
        noise_sigma = self.noise_sigma_raw / self.imap.scale
        self.make_denoiser = functools.partial(CountingDenoiser, image_channels=self.image_shape[0],
                                               chunk_size=common["chunk_size"], precision=common["precision"])
        source = self.prior_meta_source if self.prior_meta_source is not None else self.loaded_prior
        self.prior_meta = dict(getattr(source, "metadata", {}) or {}) if self.uses_prior else {}
        self.dc = DataConsistency(physics, y_mapped, noise_sigma, common["cg_iterations"], common["use_project"])
        if self.adapt_options is not None:  # the training's floor follows the data-consistency step
            self.adapt_options = self.adapt_options.for_operator(self.dc.closed_form)
        problem = Problem(
            physics=physics,
            y=y_mapped,
            x_init=self.imap.to_prior(x_fbp_raw),
            denoise=self.make_denoiser(self.loaded_prior) if self.uses_prior else None,
            dc=self.dc,
            generator=torch.Generator(device=device).manual_seed(self.seed),
            n_samples=self.n_samples,
            noise_sigma=noise_sigma,
            sigma_min=float(self.prior_meta.get("sigma_min", SIGMA_MIN)),
            sigma_max=float(self.prior_meta.get("sigma_max", SIGMA_MAX)),
        )
        x_init, self.init_label = _initial_estimate(common["init"], y_raw, physics, self.imap, y_mapped,
                                                    replace(problem, n_samples=1), problem.x_init)
        self.problem = replace(problem, x_init=x_init)
        self.extra = {"self_validation": {**self.choice.metadata, "shared": True}} if self.choice is not None else {}
        self.t0_requested = self.specific.get("t0")
        self.std_scale = None
        self.fits = {}  # the held-out splits and their fit-data problems, each made once when first needed
        self.validation_images = 0  # network images this call's self-validation runs evaluate, all stages together
        if self.choice is not None and self.calibrates:
            self.std_scale = self.choice.std_scale_for(self.n_samples)
            if self.std_scale is None:
                logger.warning("the choice holds no std scale (it was made with K = 1 or calibrate=False): "
                               "the std is the samples' raw spread")
        self.std_warning = (selfvalidation.calibration_warning(self.method, self.given, self.specific.get("objective"))
                            if self.calibrates and self.uses_prior else None)
        if self.std_warning:
            logger.warning(self.std_warning)

    def _settle_auto_options(self) -> None:
        """The options set to "auto" that this run chooses on held-out data: not those a shared choice settled
        (taken from it, as is its t0 factor), nor those the method's objective does not use
        (``option_choice.auto_options``)."""
        self.shared_t0_factor = self.choice.options.get("t0_factor") if self.choice is not None else None
        self.auto_options = option_choice.auto_options(self.method, self.specific)
        if self.choice is not None:  # chosen once for the volume
            for option in [option for option in self.auto_options if option in self.choice.options]:
                self.specific[option] = self.choice.options[option]
                self.auto_options.remove(option)
        self.chosen_options = {}

    def _count_runs(self) -> None:
        """The runs before the reconstruction, counted up front for one progress count that never goes back."""
        adapt_options, neighbours = self.adapt_options, self.neighbours
        # per round a steered run, the training, and the neighbours' runs; steered or not, the neighbours'
        # calibration runs; unsteered, this slice's further splits
        adapt_runs = 0 if adapt_options is None else (
            1 if adapt_options.objective == "misfit" else (2 + len(neighbours)) * adapt_options.rounds)
        self.more_splits = self.common["calibration_splits"] - 1 if self.calibrates and not neighbours else 0
        self.neighbour_ratio_runs = len(neighbours) if self.calibrates else 0  # each neighbour's own split, where calibrated
        calibration_runs = self.neighbour_ratio_runs + (self.more_splits if self.adapt_mode == "off" else 0)
        self.self_validation_runs = ((len(self.candidates or {None: 0}) + adapt_runs + calibration_runs)
                                     if self.validate else 0)
        validation_runs = self.self_validation_runs + (len(option_choice.T0_FACTORS) * option_choice.T0_SPLITS
                                                       if self.t0_requested == "validate" and self.shared_t0_factor is None
                                                       and not self.choice_only else 0)
        validation_runs += sum(len(option_choice.AUTO_OPTIONS[(self.method, option)])
                               * (option_choice.own_splits((self.method, option), bool(self._option_slices(option)))
                                  + len(self._option_slices(option)))
                               for option in self.auto_options)
        self.progress = RunProgress(validation_runs + (0 if self.choice_only else 1))

    def _split(self, index: int = 0):
        """Held-out split ``index`` and its fit-data problems (``_fit_data``), made once when first needed."""
        if index not in self.fits:
            self.fits[index] = _fit_data(self.problem, self.physics, self.y_raw, self.imap, self.noise_sigma_raw,
                                         self.common, torch.Generator(device=self.device).manual_seed(
                                             holdout.split_seed(self.seed, index)))
        return self.fits[index]

    def _splits(self, count: int, runs_each: int) -> list:
        """Split 0 and up to ``count - 1`` more; a further split that holds out too little (entries are held
        out at random) is left out, with its ``runs_each`` runs taken off the progress count."""
        made = [self._split(0)]
        for index in range(1, count):
            try:
                made.append(self._split(index))
            except holdout.TooFewMeasurements as err:
                logger.warning("held-out split %d left out: %s", index, err)
                self.progress.n_runs -= runs_each
        return made

    def _choose_option(self, option: str, later: list) -> Steps:
        """An option set to "auto", chosen on held-out data (those ``later`` in the order: their run defaults meanwhile)."""
        key = (self.method, option)
        meanwhile = {name: self.record.run_default(name) for name in later}
        others = [(other_fits, problem, physics, {**specific, **meanwhile, **self.chosen_options})
                  for other_fits, problem, physics, specific in self._neighbour_fits(option)]
        own_splits = option_choice.own_splits(key, bool(others))
        if self._option_slices(option) and not others:  # every neighbour left out: this slice's splits decide
            self.progress.n_runs += (own_splits - 1) * len(option_choice.AUTO_OPTIONS[key])
        fits = self._splits(own_splits, len(option_choice.AUTO_OPTIONS[key]))
        self.specific[option], self.extra["self_validation"] = yield from option_choice.choose_option(
            fits, self.problem, self.physics, {**self.specific, **meanwhile}, self.record, option, self.loaded_prior,
            self.make_denoiser, self.progress, others)
        self.chosen_options[option] = self.specific[option]
        self.validation_images += self.extra["self_validation"]["network_images"]
        self.extra.setdefault("auto_options", {})[option] = self.extra["self_validation"]  # kept when calibration's record follows

    def _option_slices(self, option: str) -> list:
        """The neighbours (indices) whose held-out data score ``option``'s candidates beside this slice's
        (``option_choice.AUTO_OPTION_SLICES``, spread over them)."""
        return option_choice.spread(len(self.neighbours), option_choice.AUTO_OPTION_SLICES.get((self.method, option), 0))

    def _neighbour_fits(self, option: str) -> list:
        """``(fits, problem, physics, specific)`` of each neighbour of :meth:`_option_slices`: its own set-up
        (intensity map, initial estimate) with this run's options, and its first held-out split (seed
        ``seed + 1 + i``, as its calibration run's). A neighbour that cannot hold part of its data out,
        or whose set-up fails, is left out with a warning and its runs taken off the progress count."""
        made, runs_each = [], len(option_choice.AUTO_OPTIONS[(self.method, option)])
        for i in self._option_slices(option):
            y_other, physics, own = self._neighbour(i)
            try:
                other = _Reconstruction(y_other, physics, self.method, self.loaded_prior, 1, self.steps, self.t0,
                                        self.seed + 1 + i, self.device, "off", False, None, None, False,
                                        {**self.options, **own})
                other._set_up()
                made.append(([other._split(0)], other.problem, other.physics, other.specific))
            except ValueError as err:  # holdout.TooFewMeasurements among them
                logger.warning("neighbours[%d] does not score %s: %s", i, option, err)
                self.progress.n_runs -= runs_each
        return made

    def _validate_on(self, fit, candidates: dict, adapt_mode: str, adapt_options, calibrate: bool,
                     more_images: Optional[Callable] = None) -> Steps:
        """Choose the prior (and steering) on the fit data of ``fit``, score on its held-out data, calibrate;
        returns a ``selfvalidation.Choice``."""
        split, make_problem = fit
        common, specific, problem = self.common, self.specific, self.problem
        margin = None
        if isinstance(specific.get("t0"), str):
            margin = common["t0_margin"] if common["t0_margin"] is not None else ccdf_module.default_margin(problem)

        def sample(fit_problem: Problem, start_factor: float = 1.0) -> Steps:
            options = dict(specific)
            if isinstance(options.get("t0"), str):  # "auto", from the fit data's own initial estimate
                options["t0"] = ccdf_module.clamp_t0(ccdf_module.auto_t0(fit_problem, margin=margin)[0] * start_factor)
            return (yield from self.progress.relay(self.record.run(fit_problem, **options)))

        return selfvalidation.choose(candidates=candidates, split=split, physics=self.physics, y=problem.y,
                                     make_problem=lambda denoise, generator: make_problem(
                                         denoise, generator, selfvalidation.VALIDATION_SAMPLES),
                                     sample=sample, adapt_mode=adapt_mode, adapt_options=adapt_options,
                                     steps=int(specific.get("steps") or 1), make_denoiser=self.make_denoiser,
                                     seed=self.seed, noise_sigma=problem.noise_sigma, calibrate=calibrate,
                                     n_samples=problem.n_samples, relay=self.progress.relay,
                                     precision=common["precision"], more_images=more_images)

    def _self_validate(self) -> Steps:
        """Prior, steering and std scale from held-out data (this slice's, and its neighbours' where given)."""
        try:
            choice = yield from self._validate_on(
                self._split(), self.candidates or {self.prior_meta.get("name", "prior"): self.loaded_prior},
                self.adapt_mode, self.adapt_options, self.calibrates,
                self._neighbour_images if self.neighbours else None)
        except holdout.TooFewMeasurements:
            if self.adapt_mode != "off" or self.auto_prior:
                raise
            logger.warning("the measurement is too small to hold part of it out: the std is not calibrated")
            self.progress.n_runs -= self.self_validation_runs
            return
        more_ratios = self.neighbour_ratio_runs or self.more_splits  # the volume's other slices, else more splits of this one
        # a volume pools its ratio, steered or not; one slice's further splits serve an unadapted prior only
        if more_ratios and (self.neighbours or choice.adapters is None):
            if not self.neighbours and self.adapt_mode != "off":  # the gate kept the shipped prior: not counted up front
                self.progress.n_runs += more_ratios
            if choice.error_ratio is None:  # calibration off, or samples that do not differ: nothing to pool
                logger.info("no shared-error ratio at the held-out data: no other ratios are measured")
                self.progress.n_runs -= more_ratios
            elif self.neighbours:  # the volume's ratio, not this slice's alone; with the unadapted prior
                unadapted = self.candidates[choice.prior_label] if self.candidates else self.loaded_prior
                choice = selfvalidation.over_volume(choice, (yield from self._neighbour_ratios(unadapted)),
                                                    self.n_samples)
            else:
                choice = selfvalidation.over_splits(choice, (yield from self._split_ratios(choice.prior_label, choice.prior)),
                                                    self.n_samples)
        self.loaded_prior, self.std_scale = choice.prior, choice.std_scale
        self.problem = replace(self.problem, denoise=self.make_denoiser(self.loaded_prior))
        if self.candidates:
            self.prior_meta = dict(getattr(self.candidates[choice.prior_label], "metadata", {}) or {})
        self.extra["self_validation"] = choice.metadata
        self.validation_images += choice.metadata["network_images"]
        choice = replace(choice, prior=None, method=self.method, options=self.chosen_options)  # without the network: Result.choice
        if self.inherited is not None:
            choice = replace(choice, prior_label=self.inherited.prior_label, adapters=self.inherited.adapters,
                             adapt_rank=self.inherited.adapt_rank, prior_checksum=self.inherited.prior_checksum)
        self.choice = choice

    def _neighbour(self, i: int) -> tuple:
        """``(y, physics, options)`` of neighbour ``i``: its measurement, its operator (this run's where it
        names none) and its own noise level as an option (none where it gives none)."""
        y_other, operator, sigma = self.neighbours[i]
        return y_other, self.given if operator is None else operator, {"noise_sigma": sigma} if sigma is not None else {}

    def _neighbour_runs(self, prior, tolerant: bool = False, **how) -> Steps:
        """Each neighbour's short run with the unadapted ``prior`` (``VALIDATION_SAMPLES`` samples, seed
        ``seed + 1 + i``, this run's options and chosen options); ``how``: ``calibrate``, ``choice_only``.
        ``tolerant``: a neighbour whose run fails (``ValueError``) gives None instead of failing this run."""
        made = []
        t0 = "auto" if self.t0_requested == "validate" else self.t0
        for i in range(len(self.neighbours)):
            y_other, physics, own = self._neighbour(i)
            try:
                made.append((yield from self.progress.relay(reconstruct_steps(
                    y_other, physics, self.method, prior,
                    selfvalidation.VALIDATION_SAMPLES, self.steps, t0, self.seed + 1 + i, self.device, "off",
                    **{**self.options, **self.chosen_options, **own, **how}))))
            except ValueError as err:
                if not tolerant:
                    raise
                logger.warning("neighbours[%d] left out: %s", i, err)
                made.append(None)
        return made

    def _neighbour_images(self, prior, adapters: Optional[list] = None) -> Steps:
        """Reconstructions of the neighbours with the unadapted ``prior``, in the prior's units; with
        ``adapters`` (a later steering round's), with the prior so adapted, from its start factor."""
        how = {"calibrate": False}
        if adapters is not None:  # as the volume's slices sample with a kept choice
            how["choice"] = selfvalidation.Choice(prior=None, prior_label="", std_scale=None, adapters=adapters,
                                                  adapt_rank=self.adapt_options.rank, method=self.method,
                                                  start_factor=self.adapt_options.start_factor)
        images = []
        for first in (yield from self._neighbour_runs(prior, **how)):
            lo, hi = first.metadata["intensity_range"]
            self.validation_images += round(first.metadata["n_network_evals"] * selfvalidation.VALIDATION_SAMPLES
                                            * self.problem.denoise.fold)
            images.append(IntensityMap(lo, hi, self.physics.complex_images).to_prior(torch.as_tensor(first.mean)[None].to(self.device)))
        return torch.cat(images)

    def _neighbour_ratios(self, prior) -> Steps:
        """The neighbours' shared-error ratios with the unadapted ``prior``, each from its own held-out
        split and fit run alone (None where a neighbour cannot hold part of its data out)."""
        made = yield from self._neighbour_runs(prior, tolerant=True, calibrate="auto", choice_only=True,
                                               calibration_splits=1)
        self.validation_images += sum(other.metadata["network_images"] for other in made if other is not None)
        ratios = [None if other is None else other.error_ratio for other in made]
        if None in ratios:
            logger.warning("%d of %d neighbours gave no shared-error ratio (too little to hold out, samples "
                           "that do not differ, or a failed run); the volume's ratio is made without them",
                           ratios.count(None), len(ratios))
        return ratios

    def _split_ratios(self, label: str, prior) -> Steps:
        """This measurement's shared-error ratios with the unadapted ``prior`` on its held-out splits 1,
        2, ... (split 0 is the choice's own), each from its own fit run."""
        ratios = []
        for fit in self._splits(self.common["calibration_splits"], 1)[1:]:
            other = yield from self._validate_on(fit, {label: prior}, "off", None, True)
            self.validation_images += other.metadata["network_images"]
            ratios.append(other.error_ratio)
        return ratios

    def _choose_t0(self) -> Steps:
        """Auto t0 from the initial estimate's error (times an adapted prior's start factor), and with
        ``t0="validate"`` times the factor chosen on held-out data (or the volume's)."""
        specific, extra = self.specific, self.extra
        specific["t0"], extra["estimated_initial_error"], extra["t0_margin"] = ccdf_module.auto_t0(
            self.problem, margin=self.common["t0_margin"]
        )
        made = self.choice or self.inherited
        start_factor = made.start_factor if made is not None else 1.0
        if start_factor != 1.0:  # a kept adapted prior starts from more noise (AdaptOptions.start_factor)
            specific["t0"] = ccdf_module.clamp_t0(specific["t0"] * start_factor)
            extra["t0_start_factor"] = start_factor
        if self.t0_requested != "validate":
            return
        if self.shared_t0_factor is not None:  # chosen once for the volume
            factor, extra["t0_validation"] = self.shared_t0_factor, {"factor": self.shared_t0_factor, "shared": True}
        else:
            factor, extra["t0_validation"] = yield from option_choice.choose_t0_factor(
                self._splits(option_choice.T0_SPLITS, len(option_choice.T0_FACTORS)), self.problem, self.physics,
                specific, self.record, self.loaded_prior, self.make_denoiser, extra["t0_margin"], start_factor,
                self.progress)
            self.validation_images += extra["t0_validation"]["network_images"]
            if self.validate and self.choice is not None:  # this run's own choice: the volume's other slices take its factor
                self.choice = replace(self.choice, options={**self.choice.options, "t0_factor": factor})
        specific["t0"] = ccdf_module.clamp_t0(specific["t0"] * factor)

    def _result(self, samples: torch.Tensor):
        """Mean, calibrated std and metadata of the samples (in the user's units) as a Result."""
        from recon.result import Result
        from recon.uncertainty import calibrated_std_map

        samples_np = samples.detach().cpu().numpy().astype(np.float32)
        held_out_scale, coverage, std_scale = self.std_scale, None, self.std_scale
        if std_scale is not None:  # the energy match, then the factor that makes it a 2-std coverage
            adapted = any(c is not None and bool(c.adapters) for c in (self.choice, self.inherited))
            coverage = selfvalidation.coverage_factor(self.method, self.given, adapted, self.specific.get("objective"))
            std_scale = held_out_scale * coverage
        metadata = {**self._metadata(), "std_scale": std_scale, "std_scale_held_out": held_out_scale,
                    "coverage_factor": coverage,
                    "std_calibration": "held-out measurements" if std_scale is not None else "none", **self.extra}
        if self.std_warning and std_scale is not None:
            metadata["std_calibration_warning"] = self.std_warning
        metadata["wall_time_s"] = time.perf_counter() - self.started
        mean = samples_np.mean(0, dtype=np.float64).astype(np.float32)
        finite = bool(np.isfinite(samples_np).all())
        std = calibrated_std_map(samples_np, std_scale) if finite else None  # it refuses non-finite samples
        bad = ([] if finite else ["samples", "mean"]) + ([] if std is None or np.isfinite(std).all() else ["std"])
        if bad:  # never hand back NaN or Inf as if it were an image
            raise ValueError(f"the {self.method} reconstruction has NaN or Inf values in {', '.join(bad)} (largest |y| "
                             f"{float(self.y_raw.abs().max()):.3g}); check the options and that y's scale fits float32")
        return Result(mean=mean, std=std, samples=samples_np,
                      initial=self.imap.from_prior(self.problem.x_init)[0].detach().cpu().numpy(),
                      metadata=metadata, choice=self.choice)

    def _metadata(self) -> dict:
        """What ran, on what, with which prior and settings (the std's calibration is added by :meth:`_result`)."""
        from recon import __version__
        from recon.versions import library_versions

        denoise, uses_prior, specific = self.problem.denoise, self.uses_prior, self.specific
        return {
            "method": self.method,
            "n_samples": self.n_samples,
            "chunk_size": min(self.common["chunk_size"] or samples_per_call(self.device, self.image_shape, self.n_samples),
                              self.n_samples),
            "steps": specific.get("steps"),
            "t0": specific.get("t0"),
            "t0_requested": self.t0_requested,
            "seed": self.seed,
            "device": str(self.device),
            "parameters": {**{k: _jsonable(v) for k, v in self.common.items()},
                           **{k: _jsonable(v) for k, v in specific.items()}},
            "init": self.init_label,
            "intensity_range": [self.imap.lo, self.imap.hi],
            "intensity_range_source": self.imap.source,
            "noise_sigma": self.noise_sigma_raw,
            "data_consistency": self.dc.kind,
            "network_precision": ("+".join(sorted(denoise.precisions_used)) or None) if denoise is not None else None,
            "operator": type(self.given).__name__,
            "operator_description": _description_of(self.physics),
            "image_shape": list(self.image_shape),
            "n_network_evals": denoise.per_sample(self.n_samples) if denoise is not None else 0,
            "validation_network_images": self.validation_images,
            "prior_name": self.prior_meta.get("name", type(self.loaded_prior).__name__) if uses_prior else None,
            "prior_checksum": self.prior_meta.get("checksum") if uses_prior else None,
            "version": __version__,
            "libraries": library_versions(),
            "adapt": self.adapt_mode,
        }


def _intensity_map(intensity_range, x_fbp_raw: torch.Tensor, physics) -> IntensityMap:
    """The map from the user's units to the prior's range: from the initial estimate ("auto"), the
    identity (None), or the user's ``(lo, hi)``."""
    if intensity_range == "auto":
        return IntensityMap.from_estimate(x_fbp_raw, complex_images=physics.complex_images,
                                          floor=physics.intensity_floor)
    if intensity_range is None:
        return IntensityMap(0.0, 1.0, source="identity")
    return IntensityMap(float(intensity_range[0]), float(intensity_range[1]), physics.complex_images, source="user")


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return getattr(value, "__name__", type(value).__name__)
