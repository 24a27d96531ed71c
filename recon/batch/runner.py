"""``recon.batch.run``: validate everything, then reconstruct every pending slice, resumably.

Order of a run:

1. settings resolved and validated (:mod:`recon.batch.settings`); every input opened and checked
   (:mod:`recon.batch.formats`); the prior loaded once for its checksum; every existing output
   checked against the settings and its input file's contents (:mod:`recon.batch.contents`; a
   conflict stops the run here, before any work);
2. ``dry_run``: print the settings and the work list, stop;
3. the work list (slices not yet done) goes through an executor, this process or Dask
   (:mod:`recon.batch.dask_runner`); this process alone writes, one shard per finished slice
   (:mod:`recon.batch.store`), and assembles each output as its file finishes;
4. a summary: done, failed (with errors), skipped; the log file ``OUT/recon-batch.log`` keeps it all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from recon.batch.contents import input_contents
from recon.batch.formats import InputFile, SliceInput, open_input, slice_seed
from recon.batch.physics import build_physics
from recon.batch.settings import BatchSettings, check_options, resolve
from recon.batch.store import DONE, FAILED, OutputStore
from recon.batch.task import Barrier, SliceOutcome, prior_spec, run_slice
from recon.files import exclusive, input_at, open_regular
from recon.methods.data_consistency import step_kind
from recon.methods.volume import TRAINING_SLICES, reference_slice, training_count, training_slices

logger = logging.getLogger(__name__)
# per-slice lines and the summary go to the log file only; the terminal has the progress bars
file_logger = logging.getLogger("recon.batch.log")
file_logger.propagate = False

LOG_NAME = "recon-batch.log"
LOCK_NAME = ".recon-batch.lock"


@dataclass
class BatchSummary:
    """What a run did: outputs written, slices done / failed / skipped, and the failures' errors."""

    outputs: list = field(default_factory=list)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list = field(default_factory=list)  # (output key, slice index, error)
    seconds: float = 0.0
    dry_run: bool = False
    work: list = field(default_factory=list)  # (input, output, layout, n_slices, n_to_do, adapt)
    settings: Optional[BatchSettings] = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def text(self) -> str:
        lines = [f"{self.done} slice(s) done, {self.failed} failed, {self.skipped} already done "
                 f"in {self.seconds:.1f} s; outputs: {', '.join(self.outputs) or 'none'}"]
        lines += [f"  FAILED {key} slice {index}: {error}" for key, index, error in self.failures]
        return "\n".join(lines)


@dataclass
class _Plan:
    source: InputFile
    store: OutputStore
    todo: list
    settings: BatchSettings  # the run's, with ``adapt`` resolved for this file (BatchSettings.for_volume)
    choice: Optional[tuple] = None  # the file's shared self-validation saved by an earlier run (stored_choice)


def _prior_metadata(settings: BatchSettings, modalities: set) -> dict:
    """Load each prior the run uses once, here, so that a bad name fails before any work."""
    found = {}
    for modality in sorted(modalities):
        spec = prior_spec(settings, modality)
        if spec is None or spec in found:
            continue
        from recon.priors import load_prior

        try:
            meta = dict(load_prior(spec, device="cpu").metadata)
        except Exception as err:  # noqa: BLE001 - name the setting, keep the cause
            raise ValueError(f"setting 'prior': cannot load prior {spec!r}: {err}") from err
        found[spec] = {"name": meta.get("name", spec), "checksum": meta.get("checksum")}
    return found


def _plans(inputs: Sequence[str], out: str, settings: BatchSettings) -> list:
    sources = [open_input(path, settings) for path in inputs]
    keys = [s.key for s in sources]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"inputs {duplicates} would write the same output name; rename or run them separately")
    for source in sources:  # --out as the inputs' folder: <key>.h5 is the input itself
        target = os.path.join(out, source.key + ".h5")
        clash = input_at(target, inputs)
        if clash is not None:
            raise ValueError(f"the output {target!r} would replace the input {clash!r}; choose another --out")
    priors = _prior_metadata(settings, {s.modality for s in sources})
    from recon import __version__

    plans = []
    for source in sources:
        spec = prior_spec(settings, source.modality)
        prior = priors.get(spec) if spec else None
        extra = {"input": os.path.basename(source.path), "layout": source.layout, "n_slices": source.n_slices,
                 "prior_checksum": (prior or {}).get("checksum"),
                 "version": __version__}  # method defaults change between versions: never mix their slices
        if source.overridden:  # e.g. an explicit mask_pattern over the file's: other numbers than unset
            extra["overridden"] = source.overridden
        # flags that do not apply to this file (--n-angles for MRI) must not block resuming it
        unused = getattr(source, "unused_settings", set)()
        volume_settings = settings.for_volume(source.n_slices)
        file_settings = volume_settings.for_file(unused)
        contents = input_contents(source.path)  # a file replaced under its name is not resumed
        contents.update({name: input_contents(path) for name, path in source.companions().items()})
        metadata = {"settings": settings.as_dict(), "version": __version__, "input": source.describe(),
                    "input_contents": contents,
                    "prior": prior, "fingerprint_settings": file_settings.output_settings()}
        own, whole = file_settings.fingerprint(extra), volume_settings.fingerprint(extra)
        store = OutputStore(out, source.key, source.n_slices, own, metadata,
                            also_accepted=(whole,) if whole != own else ())
        store.check_ours()  # never write into, nor remove, what a user left under our names
        if not settings.overwrite:
            store.check()  # refuse before any work, for every file
        plans.append(_Plan(source, store, [], volume_settings))
    return plans


def _with_neighbours(plan: _Plan, item: SliceInput) -> SliceInput:
    """The reference ``item`` with its file's usable training slices (:func:`_unusable`) where steering is
    on or the std is calibrated (K >= 2)."""
    settings = plan.settings
    if settings.adapt == "off" and settings.samples < 2:
        return item
    try:  # the spec's operator says whether data consistency projects exactly
        count = training_count(build_physics(item.physics), settings.options)
    except Exception:  # noqa: BLE001 - e.g. NaN coil maps: the slice fails on its own turn, the run goes on
        count = TRAINING_SLICES[step_kind(True)]
    neighbours = []
    for index in training_slices(plan.source.n_slices, count):
        other = _read(plan, index)
        problem = _unusable(other)
        if problem:  # it fails on its own turn; the volume's choice is made without it
            logger.warning("%s: slice %d %s; the volume's choice is made without it", plan.store.key, index, problem)
            continue
        neighbours.append((other.measurement, other.physics))
    return replace(item, neighbours=tuple(neighbours))


def _unusable(other: Union[SliceInput, SliceOutcome]) -> Optional[str]:
    """Why a training slice cannot join its reference's run (None: it can): a bad neighbour must not fail
    the reference, and with it the volume's shared choice."""
    if isinstance(other, SliceOutcome):
        return "cannot be read"
    if not np.isfinite(np.asarray(other.measurement)).all():
        return "has NaN or Inf values"
    try:
        build_physics(other.physics)
    except Exception as err:  # noqa: BLE001 - e.g. NaN coil maps
        return f"has an operator that cannot be built ({type(err).__name__}: {err})"
    return None


def _read(plan: _Plan, index: int) -> Union[SliceInput, SliceOutcome]:
    """Slice ``index`` read from its file, with the file's steering; one that cannot be read becomes a
    failed outcome."""
    try:
        item = plan.source.read(index, slice_seed(plan.settings.seed, plan.source.path, index))
        return replace(item, adapt=plan.settings.adapt)
    except Exception as err:  # noqa: BLE001 - e.g. a truncated chunk: record it, go on
        return SliceOutcome(plan.source.key, index, FAILED, error=f"cannot read slice: {type(err).__name__}: {err}")


def _items(plans: Iterable[_Plan], choices: dict) -> Iterator:
    """Each pending slice read from its file, in the order the shared choices need.

    Where the slices of a file share one self-validation (:meth:`BatchSettings.shares_choice`), the
    reference slices of the files whose choice is not yet made come first; then, file by file, a
    :class:`Barrier` that waits for that file's choice and the file's other slices, each given its
    choice from ``choices``: an ``(info, arrays)`` record, filled in by the caller as the reference
    slices finish (``info`` None: each slice its own).
    """
    plans = [plan for plan in plans if plan.todo]
    references = {plan.store.key for plan in plans if plan.settings.shares_choice() and plan.store.key not in choices}
    for plan in plans:
        if plan.store.key in references:
            item = _read(plan, reference_slice(plan.source.n_slices))
            yield item if isinstance(item, SliceOutcome) else _with_neighbours(plan, replace(item, reference=True))
    for plan in plans:
        if plan.store.key in references:
            yield Barrier(plan.store.key, lambda key=plan.store.key: key in choices)
        for index in plan.todo:
            if plan.store.key in references and index == reference_slice(plan.source.n_slices):
                continue
            item = _read(plan, index)
            if plan.settings.shares_choice() and not isinstance(item, SliceOutcome):
                item = replace(item, choice=choices.get(plan.store.key))
            yield item


def stored_choice(store) -> Optional[tuple]:
    """The file's saved choice record if it can be used; an unusable one is removed (the reference redoes it)."""
    from recon.methods.selfvalidation import Choice

    record = store.load_choice()
    if record is not None and record[0] is not None:
        try:
            Choice.from_record(*record)
        except ValueError as err:
            file_logger.warning("%s: the saved self-validation cannot be used (%s); its reference slice is redone",
                                store.key, err)
            store.drop_choice()
            return None
    return record


def local_outcomes(items: Iterable, settings: BatchSettings, within_slice=None) -> Iterator[SliceOutcome]:
    """Run the slices one after another in this process.

    ``within_slice(key, index)``, if given, makes the step callback of that slice's reconstruction.
    """
    for item in items:
        if isinstance(item, SliceOutcome):
            yield item
        elif isinstance(item, Barrier):  # one slice at a time: what came before it is finished
            continue
        else:
            callback = within_slice(item.key, item.index) if within_slice is not None else None
            yield run_slice(item, settings, callback)


@contextlib.contextmanager
def _log_to(out: str):
    # appended to, never through a link or into a FIFO someone left under the log's name
    stream = os.fdopen(open_regular(os.path.join(out, LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a",
                       encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    # the package's loggers: recon's, and the operators' (noise levels, geometry warnings)
    package_loggers = [logging.getLogger(name) for name in ("recon", "operators")]
    old_levels = [package.level for package in package_loggers]
    for package in package_loggers:
        package.addHandler(handler)
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)
    file_logger.addHandler(handler)
    file_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for package, level in zip(package_loggers, old_levels):
            package.removeHandler(handler)
            package.setLevel(level)
        file_logger.removeHandler(handler)
        handler.close()
        stream.close()


def _exclusive(out: str):
    """One run per output folder at a time; the lock file stays in the folder."""
    return exclusive(os.path.join(out, LOCK_NAME),
                     f"another recon batch run is writing to {out!r}; wait for it or use another --out")


#: Inside a slice, the bar's note changes at most this often, and a log line is written at most this often.
STEP_NOTE_SECONDS = 2.0
STEP_LOG_SECONDS = 30.0


class _SliceSteps:
    """Progress inside one slice, from its reconstruction's ``callback(step, total, preview)``.

    A LoDoPaB slice takes minutes; without this the bars and the log stand still meanwhile. Updates
    are throttled (a step can take milliseconds), and a display that fails never fails the slice.
    """

    def __init__(self, progress: "_Progress", key: str, index: int, clock=time.monotonic):
        self.progress, self.key, self.index, self.clock = progress, key, index, clock
        self.started = self.noted = self.logged = clock()

    def __call__(self, step: int, total: int, preview=None) -> None:
        now = self.clock()
        try:
            if now - self.noted >= STEP_NOTE_SECONDS:
                self.noted = now
                self.progress.note(f"{self.key} slice {self.index}: step {step}/{total}")
            if now - self.logged >= STEP_LOG_SECONDS:
                self.logged = now
                file_logger.info("%s slice %d: step %d of %d after %.0f s", self.key, self.index, step, total,
                                 now - self.started)
        except Exception:  # noqa: BLE001 - progress is a display, not part of the result
            logger.debug("progress display failed", exc_info=True)


class _Progress:
    """An overall bar and one bar per file (slices/s, time left); silent when not a terminal."""

    def __init__(self, plans, enabled: Optional[bool]):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.disable = (not sys.stderr.isatty()) if enabled is None else not enabled
        total = sum(len(p.todo) for p in plans)
        self.overall = tqdm(total=total, desc="all files", unit="slice", disable=self.disable, position=0)
        self.files: dict = {}
        self.sizes = {p.store.key: len(p.todo) for p in plans}

    def update(self, key: str) -> None:
        if key not in self.files:
            self.files[key] = self._tqdm(total=self.sizes[key], desc=key, unit="slice", disable=self.disable,
                                         position=len(self.files) + 1, leave=False)
        self.files[key].update(1)
        self.overall.set_postfix_str("", refresh=False)  # the finished slice's step note
        self.overall.update(1)
        if self.files[key].n >= self.files[key].total:
            self.files[key].close()

    def note(self, text: str) -> None:
        """Where the running slice is, beside the overall bar."""
        self.overall.set_postfix_str(text)

    def within_slice(self, key: str, index: int) -> _SliceSteps:
        return _SliceSteps(self, key, index)

    def close(self) -> None:
        for bar in self.files.values():
            bar.close()
        self.overall.close()


def run(inputs: Union[str, os.PathLike, Sequence], out: Union[str, os.PathLike], config: Optional[str] = None,
        **settings) -> BatchSummary:
    """Reconstruct every slice of every input into one output per input in ``out``.

    Parameters
    ----------
    inputs : path or list of paths
        HDF5 files in the native, fastMRI or LoDoPaB-CT layout (see docs/batch.md).
    out : path
        Output folder; ``<input name>.h5`` per input and the log ``recon-batch.log`` go there.
    config : path, optional
        TOML settings file; keyword arguments override it.
    **settings
        Any field of :class:`recon.batch.settings.BatchSettings` (``method``, ``prior``, ``steps``,
        ``samples``, ``workers``, ``scheduler``, ``overwrite``, ``dry_run``, ...).

    Returns
    -------
    BatchSummary
        Failed slices do not raise: check ``summary.ok`` / ``summary.failures``.

    Raises
    ------
    ValueError
        Bad settings, unreadable or incomplete inputs, or an existing output from other settings
        (:class:`recon.batch.store.SettingsConflict`): all before any work starts.

    Examples
    --------
    >>> summary = run(["study.h5"], "outputs", method="fbp")  # doctest: +SKIP
    >>> summary.ok, summary.outputs  # doctest: +SKIP
    """
    started = time.perf_counter()
    settings = resolve(config, **settings)
    check_options(settings, "arguments" if config is None else f"{config} and arguments")
    paths = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(p) for p in inputs]
    if not paths:
        raise ValueError("no inputs given: pass one or more HDF5 files")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} exists and is not a folder")
    if settings.device != "auto" and not settings.scheduler:  # a remote cluster's GPUs are not visible here
        from recon.methods.arguments import resolve_device

        try:
            resolve_device(settings.device)
        except ValueError as err:
            raise ValueError(f"setting 'device': {err}") from None
    plans = _plans(paths, out, settings)
    summary = BatchSummary(dry_run=settings.dry_run, settings=settings)

    if settings.dry_run:
        _list_work(plans, settings, summary)
        summary.seconds = time.perf_counter() - started
        return summary

    with contextlib.ExitStack() as stack:
        try:  # a folder that cannot be written fails here, before the first slice
            os.makedirs(out, exist_ok=True)
            stack.enter_context(_exclusive(out))
            stack.enter_context(_log_to(out))
            file_logger.info("recon batch: %d input(s) -> %s; settings: %s", len(plans), out,
                             settings.output_settings())
            for plan in plans:
                _prepare(plan, settings, summary)
        except OSError as err:
            raise ValueError(f"cannot write to --out {out!r}: {err}") from err
        try:
            _execute(plans, settings, summary)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM through the CLI: finished slices are kept
            summary.seconds = time.perf_counter() - started
            stop.summary = summary
            file_logger.warning("interrupted: %s; run the same command again to resume", summary.text())
            raise
        summary.seconds = time.perf_counter() - started
        file_logger.info(summary.text())
    return summary


def _list_work(plans: list, settings: BatchSettings, summary: BatchSummary) -> None:
    """A dry run's work list: each input, its output, and the slices a run would reconstruct."""
    for plan in plans:
        previous = plan.store.statuses() if not settings.overwrite else []
        done = sum(1 for s in previous if s == DONE)
        summary.work.append((plan.source.path, plan.store.path, plan.source.layout, plan.source.n_slices,
                             plan.source.n_slices - done, plan.settings.adapt))


def _prepare(plan: _Plan, settings: BatchSettings, summary: BatchSummary) -> None:
    """Open ``plan``'s output, keep its finished slices, and set what is left to do (``plan.todo``)."""
    done = plan.store.prepare(overwrite=settings.overwrite)
    if plan.settings.shares_choice() and len(done) < plan.source.n_slices:
        plan.choice = stored_choice(plan.store)
        if plan.choice is None:  # its choice was not kept: the reference makes it again, the same
            done.discard(reference_slice(plan.source.n_slices))
    plan.todo = [i for i in range(plan.source.n_slices) if i not in done]
    summary.skipped += len(done)
    summary.outputs.append(plan.store.path)
    file_logger.info("%s: %s layout, %d slice(s), %d already done, steering %s", plan.source.path,
                     plan.source.layout, plan.source.n_slices, len(done), _steering(plan.settings.adapt))


def _execute(plans: list, settings: BatchSettings, summary: BatchSummary) -> None:
    by_key = {plan.store.key: plan for plan in plans}
    remaining = {plan.store.key: len(plan.todo) for plan in plans}
    last_assembly = {key: time.monotonic() for key in by_key}
    # output key -> the file's choice record (info None where its reference made none or failed)
    choices = {plan.store.key: plan.choice for plan in plans if plan.choice is not None}
    items = _items(plans, choices)
    progress = _Progress(plans, settings.progress)
    if settings.workers or settings.scheduler:  # steps inside a slice stay on its worker
        from recon.batch.dask_runner import dask_outcomes

        outcomes = dask_outcomes(items, settings)
    else:
        outcomes = local_outcomes(items, settings, progress.within_slice)
    try:
        for plan in plans:
            if not plan.todo:
                plan.store.finish(settings.save_samples)
            else:
                plan.store.assemble(settings.save_samples)  # readable output from the start
        for outcome in outcomes:
            plan = by_key[outcome.key]
            if outcome.choice is not None:  # kept before the slice itself: a done reference always has its choice
                plan.store.save_choice(outcome.choice)
                choices[outcome.key] = outcome.choice
                file_logger.info("%s: slice %d's self-validation is shared by the file's slices: %s", outcome.key,
                                 outcome.index, _choice_summary(outcome.choice[0]))
            elif (plan.settings.shares_choice() and outcome.key not in choices
                  and outcome.index == reference_slice(plan.source.n_slices)):
                # the reference failed: the other slices self-validate each for itself, now and on resume
                choices[outcome.key] = (None, {})
                plan.store.save_choice((None, {}))
                file_logger.warning("%s: reference slice %d failed (%s); every slice of the file self-validates "
                                    "itself", outcome.key, outcome.index, outcome.error)
            plan.store.save(outcome)
            remaining[outcome.key] -= 1
            progress.update(outcome.key)
            if outcome.status == DONE:
                summary.done += 1
                file_logger.info("%s slice %d done in %.2f s%s", outcome.key, outcome.index, outcome.seconds,
                            "" if outcome.psnr != outcome.psnr else f" (PSNR {outcome.psnr:.2f} dB, SSIM {outcome.ssim:.3f})")
            else:
                summary.failed += 1
                summary.failures.append((outcome.key, outcome.index, outcome.error))
                file_logger.error("%s slice %d failed: %s", outcome.key, outcome.index, outcome.error)
            if remaining[outcome.key] == 0:
                counts = plan.store.finish(settings.save_samples)
                file_logger.info("%s written: %s", plan.store.path, counts)
            elif time.monotonic() - last_assembly[outcome.key] >= settings.checkpoint_seconds:
                plan.store.assemble(settings.save_samples)
                last_assembly[outcome.key] = time.monotonic()
    finally:
        progress.close()
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
        for key, plan in by_key.items():
            if plan.todo and remaining[key] > 0:  # interrupted: keep what is done readable
                plan.store.assemble(settings.save_samples)


def _choice_summary(info: Optional[dict]) -> str:
    if info is None:
        return "none made (nothing to calibrate, or too little to hold out); each slice self-validates itself"
    steering = (info.get("metadata") or {}).get("steering") or {}
    return (f"prior {info['prior_label']}, adapters {'kept' if info.get('n_adapters') else 'not kept' if steering else 'off'}, "
            f"held-out std scale {info['std_scale']} (before the modality's coverage factor)")


def _steering(adapt) -> str:
    return adapt if isinstance(adapt, str) else f"{dict(adapt).get('mode', 'on')} (with options)"


def dry_run_text(summary: BatchSummary) -> str:
    """The resolved settings and the work list, as ``--dry-run`` prints them."""
    lines = ["# resolved settings", summary.settings.describe(), "", "# work list"]
    for source, output, layout, n_slices, todo, adapt in summary.work:
        lines.append(f"{source} ({layout}, {n_slices} slices, steering {_steering(adapt)}) -> {output}: "
                     f"{todo} to do, {n_slices - todo} done")
    return "\n".join(lines)
