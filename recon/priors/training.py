"""Train a prior with the EDM objective; writes the checkpoint that ``load_prior`` reads.

Why it is built this way:

- Step ``k`` draws its images from ``numpy.random.default_rng([seed, k])`` and its noise from a
  torch generator seeded with ``(seed, k)``, so there is no random state to save: resuming at step
  ``k`` sees exactly the batches an uninterrupted run would (bitwise identical weights on CPU).
- The checkpoint is always loadable as a prior (its ``state_dict`` holds the EMA weights); the
  ``training`` entry adds what resume needs. :func:`export_prior` strips it for shipping.
- Because a batch depends only on ``(seed, step)``, ``workers`` processes can draw batches ahead of
  the GPU without changing them: the procedural CT phantoms cost ~2 ms each on one core, which would
  otherwise leave a GPU idle most of the time.
- Sigma is drawn from EDM's log-normal (most steps, where denoising is hardest) mixed with a
  log-uniform share over the whole [sigma_min, sigma_max] range, so sampling from pure noise works.
"""

from __future__ import annotations

import copy
import logging
import math
import multiprocessing
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from recon.files import check_can_create, exclusive, input_at
from recon.methods.checks import check_positive_int
from recon.metrics import psnr_per_image
from recon.priors import checkpoint as ckpt
from recon.priors.data import HDF5Images, center_patch, held_out_images, training_source
from recon.priors.network import EDMDenoiser, UNetConfig, count_parameters, edm_loss_weight
from recon.priors.prior import sigma_range

logger = logging.getLogger(__name__)

VALIDATION_SIGMAS = (0.05, 0.1, 0.2, 0.5)
#: options a resumed run may change (e.g. a lower learning rate for the last steps); the others
#: (architecture, data, seed) come from the checkpoint so the run stays the same run
RESUME_OVERRIDES = ("lr", "warmup", "ema_decay", "checkpoint_every", "validate_every", "grad_clip")


@dataclass
class TrainOptions:
    """Everything that decides a training run (stored in the checkpoint, reused on resume)."""

    steps: int = 6000
    batch_size: int = 16
    size: int = 64
    lr: float = 4e-4
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    validate_every: int = 1000
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    uniform_fraction: float = 0.2
    grad_clip: float = 1.0
    amp: bool = True
    widths: tuple[int, ...] = (16, 32, 64, 128)
    zoom: Optional[tuple[float, float]] = None  # scan views' zoom range; None: the data's default
    extra: dict = field(default_factory=dict)


def sample_sigmas(batch_size: int, options: TrainOptions, generator: torch.Generator) -> torch.Tensor:
    """Noise levels in [0, 1] image units: EDM log-normal (in [-1, 1] units) plus a log-uniform share."""
    lognormal = torch.exp(options.p_mean + options.p_std * torch.randn(batch_size, generator=generator)) / 2.0
    lo, hi = math.log(options.sigma_min), math.log(options.sigma_max)
    uniform = torch.exp(lo + (hi - lo) * torch.rand(batch_size, generator=generator))
    pick_uniform = torch.rand(batch_size, generator=generator) < options.uniform_fraction
    return torch.where(pick_uniform, uniform, lognormal).clamp(options.sigma_min, options.sigma_max)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**62))


@torch.no_grad()
def validate(model: torch.nn.Module, images: torch.Tensor, sigmas=VALIDATION_SIGMAS, seed: int = 1234) -> dict:
    """Mean denoising PSNR (dB) of ``model`` on ``images`` (N, 1, H, W) at each sigma; fixed noise."""
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for sigma in sigmas:
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        sigma_t = torch.full((images.shape[0],), float(sigma), device=images.device)
        results[f"{sigma:g}"] = float(psnr_per_image(model(images + sigma * noise, sigma_t), images).mean())
    return results


class _Data:
    """Training source plus validation images for a built-in kind or an HDF5 dataset."""

    def __init__(self, data: str, size: int, hdf5=None, key=None, normalise="minmax", zoom=None):
        if hdf5 is not None:
            if zoom is not None:
                raise ValueError("zoom applies to the built-in scan data, not to HDF5 images")
            if not key:
                raise ValueError("training on an HDF5 file needs the dataset key (key=...)")
            self.source = HDF5Images(hdf5, key, normalise)
            images = self.source.images
            n_val = max(1, len(images) // 10) if len(images) > 1 else 0
            validation = images[len(images) - n_val :] if n_val else images
            if n_val:
                self.source.images = images[: len(images) - n_val]
            else:
                logger.warning("%s:%s holds one image: it is trained on and validated on, so the checkpoint's "
                               "validation PSNR is on training data; store more images to hold some out", hdf5, key)
            self.validation = np.stack([center_patch(v, size) for v in validation[:8]])
            self.name, self.checksum, self.normalise = Path(hdf5).stem, self.source.checksum, normalise
        else:
            self.source = training_source(data, zoom)
            self.validation = held_out_images(data, size)
            self.name, self.checksum, self.normalise = data, None, None
        self.source.sample(np.random.default_rng(0), 1, size)  # a patch size the data cannot give fails here
        self.description = self.source.description
        self.earlier_descriptions = ()  # what checkpoints of earlier versions recorded for the same data
        if hdf5 is not None and n_val:
            trained = len(self.source.images)
            self.description = f"{self.source.description}: {trained} trained, {n_val} held out for validation"
            self.earlier_descriptions = (self.source.description,)  # until 0.27.3: the file's count alone


def _lr_at(step: int, options: TrainOptions) -> float:
    return options.lr * min(1.0, (step + 1) / max(1, options.warmup))


_WORKER_SOURCE = None


def _init_worker(source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _draw_in_worker(seed: int, step: int, batch_size: int, size: int) -> np.ndarray:
    return _WORKER_SOURCE.sample(np.random.default_rng([seed, step]), batch_size, size)


def _batches(source, options: "TrainOptions", start: int, end: int, workers: int):
    """Yield the image batch of every step in [start, end); identical for any number of workers."""
    if workers <= 0:
        for step in range(start, end):
            yield source.sample(np.random.default_rng([options.seed, step]), options.batch_size, options.size)
        return
    context = multiprocessing.get_context("spawn")  # no fork after CUDA or threads have started
    # each worker gets its own copy of the source (an HDF5 source's images included)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(source,))
    try:
        pending, next_step = deque(), start
        while pending or next_step < end:
            while next_step < end and len(pending) < 2 * workers:
                pending.append(pool.submit(_draw_in_worker, options.seed, next_step, options.batch_size, options.size))
                next_step += 1
            yield pending.popleft().result()
    finally:  # a stop, an error or an interrupt: drop the batches drawn ahead
        pool.shutdown(wait=True, cancel_futures=True)


def _start_weights(spec) -> dict:
    """Config, EMA weights and a description of the prior a fine-tuning run starts from."""
    from recon.priors.loading import BUILTIN, builtin_path

    path = builtin_path(spec) if str(spec) in BUILTIN else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"init_from={spec!s}: no such prior (expected one of {BUILTIN} or a checkpoint file)")
    from recon.priors.loading import load_checkpoint_prior

    prior = load_checkpoint_prior(path)  # weights that fit their architecture, finite: named errors otherwise
    config = prior.net.config
    if config.channels != 1:
        raise ValueError(f"init_from={spec!s} has {config.channels} channels; training makes 1-channel priors")
    built = UNetConfig(channels=1, widths=tuple(config.widths)).to_dict()
    other = {k: v for k, v in config.to_dict().items() if built[k] != v}
    if other:
        raise ValueError(f"init_from={spec!s} has the architecture {other}, which training does not build "
                         f"({ {k: built[k] for k in other} }; only the widths follow init_from)")
    description = f"{spec} (sha256 {prior.metadata['checksum'][:12]}, {prior.metadata.get('steps', '?')} steps)"
    return {"config": config.to_dict(), "state_dict": prior.net.state_dict(), "description": description}


def _check_out(out: Path, hdf5, resume: bool) -> None:
    """Refuse an ``out`` that a run would fail to write after all its work, or that holds what a user wrote:
    with ``resume=False`` an existing ``out`` is replaced, which only a checkpoint may be."""
    if out.is_dir():
        raise ValueError(f"out={out} is a folder; the checkpoint is one file: give a file name such as {out / 'prior.pt'}")
    try:  # its folder is made at the first save if missing
        check_can_create(out)
    except ValueError as err:
        raise ValueError(f"out={out}: {err}; the checkpoint would fail at its first save, after the steps "
                         "before it") from None
    if hdf5 is not None and input_at(out, [hdf5]) is not None:
        raise ValueError(f"out={out} is the HDF5 training file itself; write the checkpoint to another file")
    if not resume and out.is_file() and out.stat().st_size:
        if not ckpt.file_head(out).startswith(ckpt.TORCH_MAGIC):
            raise ValueError(f"out={out} exists and is not a checkpoint (it does not begin as a torch file does); "
                             "resume=False replaces only a checkpoint: choose another out")


def train(data: str = "ct", out="prior.pt", steps: int | None = None, hdf5=None, key: str | None = None,
          normalise: str | None = None, resume: bool = True, device=None, name: str | None = None,
          progress: bool | None = None, stop_after: int | None = None, workers: int = 0,
          max_minutes: float | None = None, init_from=None, **option_overrides) -> Path:
    """Train (or resume training) a prior and write its checkpoint to ``out``.

    Parameters
    ----------
    data : {"ct", "mri", "natural"}
        Built-in training images; ignored when ``hdf5`` is given.
    out : path
        Checkpoint written every ``checkpoint_every`` steps and at the end; loadable by ``load_prior``.
    steps : int, optional
        Total number of optimisation steps (a resumed run continues up to this count); left out, 6000
        for a new run and the resumed run's own total.
    hdf5, key, normalise :
        Train on the images in an HDF5 dataset instead (see :class:`recon.priors.data.HDF5Images`);
        ``normalise`` left out is the resumed run's own, else ``"minmax"``. A resume checks the images'
        contents (sha256), not only the file's name and shape.
    resume : bool
        Continue from ``out`` if it exists: its saved options are kept except ``RESUME_OVERRIDES``
        given here (``steps`` may be raised, ``lr`` lowered for a final phase). Without it an existing
        ``out`` is replaced, but only when it is a checkpoint (a file ``torch.save`` wrote).
    device : str or torch.device, optional
        Defaults to CUDA when available; mixed precision (bfloat16) is used there when ``amp``.
    stop_after : int, optional
        Stop (with a checkpoint) after this many steps of this call, as an interruption would.
    workers : int
        Processes that draw training batches ahead of the optimiser (0: draw in this process). The
        batches, hence the weights, do not depend on it.
    max_minutes : float, optional
        Stop (with a checkpoint) once this call has trained this long; resuming continues the run.
    init_from : str or path, optional
        Start a new run from these weights (a built-in name such as ``"mri"`` or one of our
        checkpoints) instead of random ones: fine-tuning a prior on your own images. The network's
        widths come from it. Ignored when resuming (the checkpoint's own weights continue).
    **option_overrides :
        Fields of :class:`TrainOptions` (batch_size, size, lr, ema_decay, seed, ...).

    Examples
    --------
    >>> train("ct", out="ct.pt", steps=20, size=32, batch_size=4)  # doctest: +SKIP
    """
    from recon.methods.arguments import resolve_device

    out = Path(out)
    device = resolve_device(device)
    _check_arguments(workers, max_minutes, option_overrides)
    _check_out(out, hdf5, resume)
    out.parent.mkdir(parents=True, exist_ok=True)  # for the lock; the checkpoint's own folder
    with exclusive(out.parent / f".{out.name}.lock", f"another training run is writing {out}; wait for it or "
                   "use another --out", remove=True):
        state = _resumable_state(out) if resume and out.exists() else None
        if state is None:
            options = TrainOptions(**option_overrides)
        else:
            options = _resumed_options(out, state, option_overrides)
            if init_from is not None:
                logger.info("resuming %s: its own weights continue, init_from=%s is not used", out, init_from)
                init_from = None
        start_weights = None if init_from is None else _start_weights(init_from)
        if start_weights is not None:
            widths = tuple(start_weights["config"]["widths"])
            if "widths" in option_overrides and tuple(option_overrides["widths"]) != widths:
                raise ValueError(f"init_from={init_from!s} has widths {list(widths)}, not the {list(option_overrides['widths'])} given")
            options.widths = widths
        if steps is not None:
            options.steps = steps
        _check_options(options)

        if normalise is None:  # left out: the resumed run's own, else min-max
            normalise = (state["metadata"].get("training_normalise") if state is not None else None) or "minmax"
        dataset = _Data(data, options.size, hdf5=hdf5, key=key, normalise=normalise, zoom=options.zoom)
        if state is not None and state["metadata"].get("training_data") not in (dataset.description,
                                                                                *dataset.earlier_descriptions):
            raise ValueError(f"{out} was trained on {state['metadata'].get('training_data')!r}, not on "
                             f"{dataset.description!r}; resume with the same data or write to a new --out")
        recorded = state["metadata"].get("training_data_sha256") if state is not None else None
        if recorded is not None and recorded != dataset.checksum:
            raise ValueError(f"{out} was trained on other images than those now in {hdf5}:{key} (same name and shape, "
                             "other contents: sha256 differs); resume with the file it was trained on or write to a "
                             "new --out")
        run = _Run(out, options, device, dataset, name, start_weights, state)
        end = options.steps if stop_after is None else min(options.steps, run.start + stop_after)
        run.fit(end, workers, max_minutes, progress)
        if run.start >= end:
            logger.info("%s already trained for %d steps", out, run.start)
    return out


def _check_arguments(workers: int, max_minutes: float | None, option_overrides: dict) -> None:
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    unknown = set(option_overrides) - set(TrainOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown training options {sorted(unknown)}; expected {sorted(TrainOptions.__dataclass_fields__)}")


def _check_options(options: TrainOptions) -> None:
    """The counts a run divides by or loops to, checked before the first step (a zero checkpoint interval
    used to fail after it, a negative step count to report a checkpoint it never wrote)."""
    for name in ("steps", "batch_size", "checkpoint_every", "validate_every"):
        setattr(options, name, check_positive_int(name, getattr(options, name), high=10**9))
    if options.size % 8:
        raise ValueError(f"training patch size must be a multiple of 8, got {options.size}")
    try:  # the checkpoint would not load with another range
        sigma_range({"sigma_min": options.sigma_min, "sigma_max": options.sigma_max})
    except ValueError as error:
        raise ValueError(f"training noise range: {error}") from None


def _resumable_state(out: Path) -> dict:
    """The checkpoint a run resumes from; an exported prior has no training state to resume."""
    state = ckpt.read_checkpoint(out)
    if "training" not in state:
        raise ckpt.CheckpointError(f"{out} is an exported prior without training state; cannot resume from it")
    return state


def _resumed_options(out: Path, state: dict, option_overrides: dict) -> TrainOptions:
    """The checkpoint's options, changed only where ``RESUME_OVERRIDES`` allow: the run stays the same run."""
    saved = dict(state["training"]["options"])
    saved["widths"] = tuple(saved["widths"])
    if saved.get("zoom") is not None:
        saved["zoom"] = tuple(saved["zoom"])
    allowed = {k: v for k, v in option_overrides.items() if k in RESUME_OVERRIDES}
    ignored = {k: v for k, v in option_overrides.items() if k not in RESUME_OVERRIDES and saved.get(k) != v}
    if ignored:
        logger.warning("resuming %s: keeping its saved options, ignoring %s", out, ignored)
    options = TrainOptions(**{**saved, **allowed})
    logger.info("resuming %s from step %d with %s", out, state["training"]["step"], allowed)
    return options


class _Run:
    """One training run: the network, its EMA copy and optimiser, the history, and the checkpoint they make.

    Built from fresh (seeded) or given start weights, or from a checkpoint to resume; :meth:`fit` trains
    up to a step and saves along the way.
    """

    def __init__(self, out: Path, options: TrainOptions, device: torch.device, dataset: _Data,
                 name: str | None, start_weights: dict | None, state: dict | None):
        self.out, self.options, self.device, self.dataset = out, options, device, dataset
        self.config = UNetConfig(channels=1, widths=tuple(options.widths))
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, without touching the caller's RNG
            torch.manual_seed(options.seed)
            self.model = EDMDenoiser(self.config).to(device)
        if start_weights is not None:
            self.model.load_state_dict(start_weights["state_dict"])
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        self.start, self.history = 0, []
        if state is not None:
            self.model.load_state_dict(state["training"]["model"])
            self.ema.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["training"]["optimizer"])
            self.start, self.history = int(state["training"]["step"]), list(state["training"].get("history", []))
        self.use_amp = options.amp and device.type == "cuda"
        self.metadata = self._metadata(name, start_weights, state)

    def _metadata(self, name: str | None, start_weights: dict | None, state: dict | None) -> dict:
        options = self.options
        kept_name = state["metadata"].get("name") if state is not None else None  # a resume keeps the run's name
        metadata = {"name": name or kept_name or self.dataset.name, "training_data": self.dataset.description,
                    "channels": 1,
                    "sigma_min": options.sigma_min, "sigma_max": options.sigma_max, "resolution": options.size,
                    "architecture": f"EDM-preconditioned UNet, widths {list(options.widths)}, GroupNorm+SiLU",
                    "n_params": count_parameters(self.model), "batch_size": options.batch_size, "seed": options.seed,
                    "ema_decay": options.ema_decay}
        if options.zoom is not None:  # the views' scales, which the prior's statistics follow
            metadata["training_zoom"] = list(options.zoom)
        if self.dataset.checksum is not None:  # an HDF5 file's images, and how they were scaled: what a resume checks
            metadata["training_data_sha256"] = self.dataset.checksum
            metadata["training_normalise"] = self.dataset.normalise
        if start_weights is not None:
            metadata["init_from"] = start_weights["description"]
        elif state is not None and "init_from" in state["metadata"]:
            metadata["init_from"] = state["metadata"]["init_from"]
        return metadata

    def save(self, step: int) -> None:
        last_val = next((h["validation_psnr"] for h in reversed(self.history) if "validation_psnr" in h), {})
        options = self.options
        training = {"step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "options": {**asdict(options), "widths": list(options.widths),
                                "zoom": None if options.zoom is None else list(options.zoom)},
                    "history": self.history}
        ckpt.save_checkpoint(self.out, self.config.to_dict(), self.ema.state_dict(),
                             {**self.metadata, "steps": step, "validation_psnr": last_val}, training)

    def step(self, step: int, batch: np.ndarray) -> float:
        """One optimiser step on ``batch`` with step ``step``'s noise, then the EMA update; returns the loss."""
        options, device = self.options, self.device
        images = torch.from_numpy(batch)[:, None].to(device)
        generator = _step_generator(options.seed, step)
        sigma = sample_sigmas(options.batch_size, options, generator)
        noise = torch.randn(images.shape, generator=generator)
        sigma, noise = sigma.to(device), noise.to(device)
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(step, options)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            denoised = self.model(images + sigma[:, None, None, None] * noise, sigma)
        loss = (edm_loss_weight(sigma)[:, None, None, None] * (denoised.float() - images) ** 2).mean()
        value = float(loss.detach())
        if not math.isfinite(value):  # stop before the step: the last checkpoint stays a usable one
            saved = max((h["step"] for h in self.history), default=self.start)
            raise FloatingPointError(f"training diverged at step {step + 1}: the loss is {value}; {self.out} keeps "
                                     f"its last checkpoint (step {saved} or earlier): resume with a lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            decay = min(options.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(self.ema.parameters(), self.model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        return value

    def fit(self, end: int, workers: int, max_minutes: float | None, progress: bool | None) -> None:
        """Train from :attr:`start` up to step ``end``, validating, logging and saving as the options say."""
        from tqdm.auto import tqdm

        options = self.options
        disable = (not sys.stderr.isatty()) if progress is None else not progress
        bar = tqdm(total=options.steps, initial=self.start, desc=f"train {self.metadata['name']}", disable=disable)
        validation = torch.from_numpy(self.dataset.validation)[:, None].to(self.device)
        running, t0 = None, time.time()
        self.model.train()
        batches = _batches(self.dataset.source, options, self.start, end, workers)
        with _StopRequest() as stop:
            try:
                for step, batch in zip(range(self.start, end), batches):
                    value = self.step(step, batch)
                    running = value if running is None else 0.98 * running + 0.02 * value
                    bar.update(1)
                    bar.set_postfix(loss=f"{running:.4f}")
                    record = {"step": step + 1, "loss": running}
                    done = step + 1
                    if done % options.validate_every == 0 or done == options.steps:
                        record["validation_psnr"] = validate(self.ema, validation)
                        logger.info("step %d loss %.4f validation PSNR %s (%.2f s/step)", done, running,
                                    record["validation_psnr"], (time.time() - t0) / (done - self.start))
                    if done % 50 == 0 or "validation_psnr" in record:
                        self.history.append(record)
                    out_of_time = max_minutes is not None and time.time() - t0 > 60 * max_minutes
                    if done % options.checkpoint_every == 0 or done == end or out_of_time or stop.signal:
                        self.save(done)
                    if out_of_time:
                        logger.info("stopping after %.1f minutes at step %d; run again to resume",
                                    (time.time() - t0) / 60, done)
                        break
                    if stop.signal:
                        logger.warning("%s at step %d: checkpoint saved; run again to resume",
                                       signal.Signals(stop.signal).name, done)
                        break
            finally:  # also on an error or an interrupt: stop the batch workers
                batches.close()
        bar.close()
        stop.raise_if_stopped()


class _StopRequest:
    """SIGTERM (a scheduler's pre-emption) or a first Ctrl-C ends the current step, saves a checkpoint and
    then stops as the signal would (exit status 143, ``KeyboardInterrupt``): without it the steps since the
    last checkpoint (up to ``checkpoint_every``) were lost. A second Ctrl-C interrupts at once. Outside the
    main thread, where handlers cannot be set, the signals act as before."""

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame) -> None:
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = number

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def raise_if_stopped(self) -> None:
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is not None:
            raise SystemExit(128 + int(self.signal))


def export_prior(training_checkpoint, destination, name: str | None = None) -> Path:
    """Write a shippable prior (EMA weights and metadata only) from a training checkpoint."""
    payload = ckpt.read_checkpoint(training_checkpoint)
    metadata = dict(payload["metadata"])
    if name:
        metadata["name"] = name
    return ckpt.save_checkpoint(destination, payload["config"], payload["state_dict"], metadata)
