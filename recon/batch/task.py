"""One slice, start to finish: build the operator, reconstruct, convert, score. Never raises.

:func:`run_slice` is the unit of work of both runners (this process, or a Dask worker): it takes a
:class:`~recon.batch.layouts.SliceInput` and the resolved settings and returns a
:class:`SliceOutcome`: the arrays to store, or the error that stopped the slice. Everything it needs
travels with the input, so the result depends only on the slice and the settings: the same on any
worker, in any order.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Mapping, Optional

import numpy as np

from recon.batch import lodopab
from recon.batch.layouts import PostProcessing, SliceInput, center_crop
from recon.batch.settings import BatchSettings
from recon.methods.registry import PRIOR_METHODS
from recon.operator_kinds import default_prior


@dataclass
class SliceOutcome:
    """What became of one slice: ``status`` "done" (with ``arrays``) or "failed" (with ``error``)."""

    key: str
    index: int
    status: str
    arrays: dict = field(default_factory=dict)
    error: str = ""
    psnr: float = float("nan")
    ssim: float = float("nan")
    seconds: float = 0.0
    n_network_evals: int = 0
    prior: Optional[dict] = None
    choice: Optional[tuple] = None  # a reference slice's self-validation, Choice.record()'s; (None, {}): it made none


@dataclass(frozen=True)
class Barrier:
    """In a work list, before the slices of a file that need its reference slice's choice.

    An executor passes it once ``ready()`` (the choice is known to the caller); until then it sends
    nothing after it, and with nothing of its own left in flight it passes anyway (the slices then
    carry no choice and self-validate each for itself).
    """

    key: str
    ready: Callable[[], bool]


def prior_spec(settings: BatchSettings, modality: str) -> Optional[str]:
    """The prior a slice uses: the setting, else the built-in of the modality (or operator kind); None for
    methods without a prior."""
    if settings.method not in PRIOR_METHODS:
        return None
    return settings.prior or default_prior(modality)


@lru_cache(maxsize=4)
def _cached_prior(spec: str, device: str):
    """Load each prior once per process (workers keep theirs between tasks)."""
    from recon.priors import load_prior

    return load_prior(spec, device=device)


def worker_device(setting: str) -> str:
    """The ``device`` setting on this worker: ``"auto"`` is a Dask worker's own GPU where it has one.

    Everything else (a device named, ``"auto"`` outside Dask or without a GPU) is
    :func:`recon.methods.arguments.resolve_device`'s, so the rules for devices live in one place.
    """
    import torch

    from recon.methods.arguments import resolve_device

    if setting == "auto" and torch.cuda.is_available():
        try:  # on a Dask worker: one GPU per worker, chosen by the worker's index
            from distributed import get_worker

            name = get_worker().name
        except (ImportError, ValueError):
            pass
        else:
            index = int(name) if str(name).isdigit() else 0
            return f"cuda:{index % torch.cuda.device_count()}"
    return str(resolve_device(None if setting == "auto" else setting))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads (0: unchanged), restoring the previous number afterwards."""
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def convert(result, post: PostProcessing) -> dict:
    """Result -> the arrays saved for this slice: magnitude of complex images, crop, orientation.

    The magnitude's std is the spread of the samples' magnitudes, calibrated by the reconstruction's
    own held-out ``std_scale`` like the channels' std it replaces.
    """
    from recon.uncertainty import calibrated_std_map

    arrays = {"mean": result.mean, "std": result.std, "initial": result.initial, "samples": result.samples}
    if post.magnitude:
        mean, initial, samples = result.mean, result.initial, result.samples
        arrays["mean"] = np.hypot(mean[0], mean[1])[None]
        arrays["initial"] = np.hypot(initial[0], initial[1])[None] if initial is not None else None
        if samples is not None and samples.shape[0] > 1:
            magnitudes = np.hypot(samples[:, 0], samples[:, 1])[:, None]
            arrays["samples"] = magnitudes
            arrays["std"] = calibrated_std_map(magnitudes, result.metadata.get("std_scale"))
        else:  # no spread to measure: propagate the channel stds
            arrays["samples"] = np.hypot(samples[:, 0], samples[:, 1])[:, None] if samples is not None else None
            arrays["std"] = np.hypot(result.std[0], result.std[1])[None]
    if post.crop:
        arrays = {name: None if a is None else center_crop(a, post.crop) for name, a in arrays.items()}
    if post.transform == "lodopab":
        arrays = {name: None if a is None else lodopab.to_dataset_orientation(a) for name, a in arrays.items()}
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in arrays.items() if a is not None}


def score(mean: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of the mean against the ground truth; data range = the truth's own range."""
    from skimage.metrics import structural_similarity

    from recon.metrics import psnr as psnr_db

    estimate = np.asarray(mean, dtype=np.float64).reshape(-1, *mean.shape[-2:])
    reference = np.asarray(truth, dtype=np.float64).reshape(-1, *truth.shape[-2:])
    if estimate.shape != reference.shape:
        raise ValueError(f"ground truth has shape {truth.shape}, the reconstruction {mean.shape}")
    data_range = float(reference.max() - reference.min()) or 1.0
    psnr = float(np.mean([psnr_db(e, r, data_range=data_range) for r, e in zip(reference, estimate)]))
    ssim = float(np.mean([structural_similarity(r, e, data_range=data_range) for r, e in zip(reference, estimate)]))
    return psnr, ssim


def run_slice(item: SliceInput, settings: BatchSettings, callback=None) -> SliceOutcome:
    """Reconstruct one slice. Any error (NaN input, wrong shape, the method failing) is returned, not raised.

    ``callback(step, total, preview)`` follows the reconstruction's steps (``recon.progress``): a
    LoDoPaB slice takes minutes, and a run should show that it is moving meanwhile.
    """
    started = time.perf_counter()
    try:
        from recon.batch.physics import build_physics
        from recon.methods import reconstruct

        device = worker_device(settings.device)
        with torch_threads(settings.threads if device == "cpu" else 0):
            measurement = np.asarray(item.measurement)
            if not np.isfinite(measurement).all():
                raise ValueError(f"measurement has {int((~np.isfinite(measurement)).sum())} NaN or Inf values")
            if item.ground_truth is not None and not np.isfinite(item.ground_truth).all():  # else "done" with NaN scores
                raise ValueError(f"ground truth has {int((~np.isfinite(item.ground_truth)).sum())} NaN or Inf values: "
                                 "the slice could not be scored; mend or remove the file's ground truth")
            physics = build_physics(item.physics)
            import torch

            torch.manual_seed(item.seed)  # any use of the global RNG is then per-slice deterministic too
            spec = prior_spec(settings, item.physics["kind"])
            prior = _cached_prior(spec, device) if spec is not None else None
            options = dict(settings.options)
            if item.physics.get("noise_sigma") is not None and "noise_sigma" not in options:
                options["noise_sigma"] = item.physics["noise_sigma"]
            choice = None
            if item.choice is not None and item.choice[0] is not None:
                from recon.methods.selfvalidation import Choice

                choice = Choice.from_record(*item.choice)
            adapt = item.adapt if item.adapt != "off" else None  # the file's (settings.adapt may be unset)
            adapt = dict(adapt) if isinstance(adapt, Mapping) else adapt  # a table of options, as reconstruct takes it
            neighbours = [(np.asarray(m), build_physics(p), None if "noise_sigma" in settings.options else p.get("noise_sigma"))
                          for m, p in item.neighbours] or None
            result = reconstruct(measurement, physics, method=settings.method, prior=prior,
                                 n_samples=settings.samples, steps=settings.steps, t0=settings.t0,
                                 seed=item.seed, device=device, callback=callback, adapt=adapt, choice=choice,
                                 neighbours=neighbours, **options)
            arrays = convert(result, item.post)
        bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
        if bad:
            raise ValueError(f"the reconstruction has NaN or Inf values in {', '.join(bad)}")
        psnr = ssim = math.nan
        if item.ground_truth is not None:
            psnr, ssim = score(arrays["mean"], item.ground_truth)
        prior_info = None
        if result.metadata.get("prior_name") is not None:
            prior_info = {"name": result.metadata["prior_name"], "checksum": result.metadata.get("prior_checksum")}
        made = None
        if item.reference:
            made = result.choice.record() if result.choice is not None else (None, {})
        return SliceOutcome(item.key, item.index, "done", arrays, psnr=psnr, ssim=ssim,
                            seconds=time.perf_counter() - started,
                            n_network_evals=int(result.metadata.get("n_network_evals", 0)), prior=prior_info,
                            choice=made)
    except Exception as err:  # noqa: BLE001 - a bad slice is recorded, the others go on
        message = f"{type(err).__name__}: {err}"
        last = traceback.extract_tb(err.__traceback__)[-1:] or None
        if last:
            message += f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})"
        return SliceOutcome(item.key, item.index, "failed", error=message, seconds=time.perf_counter() - started)
