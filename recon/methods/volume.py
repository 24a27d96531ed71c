"""The slices of one volume with one self-validation: the reference slice chooses, the others share it.

A volume's slices come from one scanner, protocol and anatomy, so one slice's self-validation (the
prior chosen, the adapters kept, the std scale) serves them all, and steering's training, a fixed
cost per volume, is paid once, on the reference and training slices spread over the volume (as D3IP
adapts one prior to a whole volume). ``recon batch`` does this per file (``recon.batch.runner``);
:func:`reconstruct_volume` does it for slices held in memory. Both take the reference slice, the
training slices and the default steering from here. Imports nothing heavy: ``recon batch``'s settings
read the defaults.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

logger = logging.getLogger(__name__)

#: Slices of a volume (its reference among them) whose first reconstructions train the volume's
#: adapters where steering is on, and whose held-out data calibrate its std (``reconstruct``'s
#: ``neighbours``), spread evenly over the volume; by the data-consistency step, as the adapters'
#: rank (``steering.DEFAULT_RANK``). On the tuning volumes (docs/steering.md) 16 gained 0.18-0.20 dB
#: over 8 on CT (all 30 slices: 0.10-0.13), and 8 stayed behind MRI's and SR's exact projections
#: (16: +0.01 on MR, -0.15 dB on SR).
TRAINING_SLICES = {"projection": 8, "cg": 16}

#: Steering once per volume trains its adapters on 8 slices (16 for CT) before the other slices run: a
#: fixed cost that the budget of twice the unsteered time affords from 16 slices on (auto / off wall
#: time over the middle 16, 24 and 48 slices of real volumes: CT 1.57, 1.31, 1.20; MR 4x 1.65, 1.50,
#: 1.23; five volumes at 16 slices 1.55-1.70, 1.67-1.83 since 0.30.0 pools the steered std; 8-slice
#: volumes, bench_volume_choice.py: 2.3-3.2; docs/steering.md, "Steering by default over long volumes").
AUTO_ADAPT_SLICES = 16
#: ... and K at least the default: the training does not get cheaper with fewer samples.
AUTO_ADAPT_SAMPLES = 8
#: What an unset ``adapt`` becomes there: steering kept where the volume's held-out data say it helps.
VOLUME_ADAPT = "auto"


def training_count(physics, options: dict) -> int:
    """How many training slices (:data:`TRAINING_SLICES`) a volume measured through ``physics`` takes, with
    the method's ``options`` (``use_project`` decides whether data consistency projects exactly)."""
    from recon.methods.arguments import COMMON_OPTIONS
    from recon.methods.data_consistency import closed_form, step_kind

    return TRAINING_SLICES[step_kind(closed_form(physics, options.get("use_project", COMMON_OPTIONS["use_project"])))]


def reference_slice(n_slices: int) -> int:
    """The slice whose self-validation a volume shares: the middle one, where a scan has most anatomy."""
    return n_slices // 2


def training_slices(n_slices: int, count: int) -> list:
    """The other slices that train a volume's adapters (or calibrate its std) beside its reference slice,
    ``count`` slices in all with it."""
    from recon.methods.option_choice import spread

    reference = reference_slice(n_slices)
    others = sorted(set(spread(n_slices, count)) - {reference}, key=lambda i: (abs(i - reference), i))
    return sorted(others[: count - 1])


def default_adapt(method: str, n_samples: int, n_slices: int) -> str:
    """An unset ``adapt`` for a volume of ``n_slices`` sharing one self-validation: "auto" where steering
    was measured to gain at a bounded cost (ccdf, at least :data:`AUTO_ADAPT_SLICES` slices and
    :data:`AUTO_ADAPT_SAMPLES` samples), "off" elsewhere: per slice it costs ~14x, and diffusion's and
    genreg's volumes were not measured."""
    steers = method == "ccdf" and n_samples >= AUTO_ADAPT_SAMPLES and n_slices >= AUTO_ADAPT_SLICES
    return VOLUME_ADAPT if steers else "off"


def reconstruct_volume(ys, physics, method: str = "ccdf", prior=None, n_samples: int = 8, steps: Optional[int] = None,
                       t0: Union[str, float, None] = None, seed: int = 0, device=None, callback=None, adapt=None,
                       calibrate: Union[str, bool] = "auto", **options) -> list:
    """Reconstruct the slices of one volume as ``recon batch`` does a file: the middle slice self-validates
    (with the training slices of :func:`training_slices` as its ``neighbours``), every other slice samples
    with its choice (``reconstruct(..., choice=...)``).

    Parameters
    ----------
    ys : sequence of measurements, or an array or tensor whose first axis is the slices
        Slice ``i``'s measurement, as ``recon.reconstruct`` takes one.
    physics : deepinv.physics.LinearPhysics, or a sequence of one per slice
        The operator of every slice, or each slice's own (e.g. its own coil maps); their images must agree.
    adapt : as ``reconstruct``'s, optional
        Unset: :func:`default_adapt` ("auto" for ccdf over 16 slices or more with K >= 8, as ``recon batch``).
    callback : callable, optional
        ``callback(index, step, total, preview)``: slice ``index``'s steps (``recon.progress``), the
        reference slice first; may raise ``Cancelled``.
    seed : int
        Slice ``i`` samples with ``seed + i``.
    method, prior, n_samples, steps, t0, device, calibrate, **options
        As ``recon.reconstruct``'s, the same for every slice.

    Returns
    -------
    list of recon.result.Result
        One per slice, in order; ``metadata["volume"]`` names the reference slice, the training slices
        and the steering mode the volume ran with.

    Every slice's measurement and operator are checked before the first is reconstructed; an error
    names the slice (``ys[i]``).
    """
    from operators.foreign import as_operator
    from recon.methods.api import reconstruct
    from recon.methods.arguments import as_measurement, check_physics, checked_slice, physics_on, resolve_device
    from recon.methods.checks import check_int, check_positive_int
    from recon.methods.registry import get_method
    from recon.methods.selfvalidation import parse_adapt

    taken = sorted({"choice", "neighbours", "choice_only"} & set(options))
    if taken:
        raise TypeError(f"reconstruct_volume makes the volume's choice from its own slices: {', '.join(taken)} "
                        "not taken (for one slice with another's choice use recon.reconstruct)")
    measurements = _slices(ys)
    n = len(measurements)
    operators = _operators(physics, n)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(index, step, total, preview) or None, got {type(callback).__name__}")
    record = get_method(method)
    n_samples = check_positive_int("n_samples", n_samples)
    check_int("seed", seed, 0, 2**64 - n)
    device = resolve_device(device)
    reference = reference_slice(n)
    try:
        check_physics(operators[reference])
        moved = physics_on(operators[reference], device)
        shared = as_operator(moved, as_measurement(measurements[reference], moved, device))
    except (TypeError, ValueError) as err:
        raise type(err)(f"ys[{reference}]: {err}") from None
    own = [None if operator is operators[reference] else operator for operator in operators]  # None: the shared one
    for i, (measurement, operator) in enumerate(zip(measurements, own)):  # all checked before any work
        try:
            checked_slice(measurement, operator, shared, device)
        except (TypeError, ValueError) as err:
            raise type(err)(f"ys[{i}]: {err}") from None
    if adapt is None:
        adapt = default_adapt(method, n_samples, n)
    mode = parse_adapt(adapt)[0]
    shares = record.uses_prior and (mode != "off" or (calibrate == "auto" and n_samples >= 2))
    others = training_slices(n, training_count(shared, options)) if shares else []
    neighbours = [(measurements[i], own[i]) for i in others]
    common = dict(method=method, prior=prior, n_samples=n_samples, steps=steps, t0=t0, device=device,
                  calibrate=calibrate, **options)
    volume = {"slices": n, "reference": reference, "training_slices": others, "adapt": adapt}
    results: list = [None] * n
    for done, i in enumerate([reference] + [i for i in range(n) if i != reference]):
        logger.info("ys[%d], %d of %d%s", i, done + 1, n, " (the reference: self-validates for the volume)" if not done else "")
        given = (dict(adapt=adapt, neighbours=neighbours or None) if i == reference
                 else dict(adapt=None, choice=results[reference].choice) if results[reference].choice is not None
                 else dict(adapt=adapt))  # the reference made no choice: each slice as it ran
        results[i] = reconstruct(measurements[i], operators[i], seed=seed + i, callback=_for_slice(callback, i),
                                 **given, **common)
        results[i].metadata["volume"] = {**volume, "index": i}
    return results


def _slices(ys) -> list:
    """``ys`` as a list of the slices' measurements (a string, or nothing, refused)."""
    refused = TypeError(f"ys must be the slices' measurements (a list, or an array whose first axis is the slices), "
                        f"got {type(ys).__name__}")
    if isinstance(ys, (str, bytes)) or ys is None:
        raise refused
    try:
        measurements = [ys[i] for i in range(len(ys))]
    except TypeError:
        raise refused from None
    if not measurements:
        raise ValueError("ys holds no slices")
    return measurements


def _operators(physics, n: int) -> list:
    """One operator per slice: ``physics`` for all, or its ``n`` items."""
    if isinstance(physics, (list, tuple)):
        if len(physics) != n:
            raise ValueError(f"physics: {len(physics)} operators for {n} slices; give one for all, or one per slice")
        return list(physics)
    return [physics] * n


def _for_slice(callback, index: int):
    """``reconstruct``'s ``callback(step, total, preview)`` for slice ``index``, or None."""
    if callback is None:
        return None
    return lambda step, total, preview: callback(index, step, total, preview)
