"""Run slices on Dask distributed: a local cluster (``--workers N``) or an existing one (``--scheduler``).

Each slice is one task running :func:`recon.batch.task.run_slice`, the same function the
single-process runner calls, with the measurement sent along; results come back to this process,
the only one that writes (see :mod:`recon.batch.store`). Per-slice seeds and single-threaded CPU
tasks make the output identical to a single-process run; where a file's slices share one
self-validation, its reference slice runs first and the file's other slices are sent with its
choice once it is back (a :class:`~recon.batch.task.Barrier` per file: the files' references go
out first, and each file's slices follow as soon as its own is back), so that too is the same on any
number of workers. At most ``2 x workers`` tasks are in flight,
so memory stays bounded however large the study. The package's log records of each slice (its
self-validation's choice, say) come back with its outcome and are logged here, so ``recon-batch.log``
holds the same lines as with one process.

A local cluster uses worker *processes* on the CPU (torch holds the GIL in places), and one worker
per GPU where GPUs exist (each task picks ``cuda:<worker index>``). Workers of a remote cluster need
this package installed and must be able to load the prior.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

from recon.batch.task import Barrier, SliceOutcome, run_slice
from recon.batch.settings import BatchSettings

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(settings: BatchSettings):
    """A ``distributed.Client``: to ``settings.scheduler``, or to a new local cluster."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - dask is a declared extra
        raise ValueError("--workers/--scheduler need dask[distributed]: pip install 'diffrecon[dask]'") from err
    quiet = logging.getLogger("distributed")
    old_level = quiet.level
    quiet.setLevel(logging.ERROR)  # the cluster's own chatter; our log says what matters
    try:
        yield from _connect(settings, Client, LocalCluster)
    finally:
        quiet.setLevel(old_level)


def _connect(settings: BatchSettings, Client, LocalCluster):
    if settings.scheduler:
        client = Client(settings.scheduler, timeout="30s")
        logger.info("joined Dask cluster %s (%d workers)", settings.scheduler, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    import torch

    n_gpus = torch.cuda.device_count() if settings.device in ("auto",) or settings.device.startswith("cuda") else 0
    n_workers = min(settings.workers, n_gpus) if n_gpus else settings.workers
    cluster = local_cluster(n_workers, LocalCluster)
    client = Client(cluster)
    logger.info("started a local Dask cluster: %d worker process(es)%s", n_workers, f" on {n_gpus} GPU(s)" if n_gpus else "")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def local_cluster(n_workers: int, LocalCluster=None):
    """Worker processes, one thread each, without Dask's ``MALLOC_TRIM_THRESHOLD_`` default.

    Dask sets that variable in its workers to give memory back to the OS sooner; it also turns off
    glibc's adaptive mmap threshold, so every large torch temporary becomes an mmap/munmap pair and
    page faults: tensor code ran up to 2x slower per task in our measurements.
    """
    import dask

    if LocalCluster is None:
        from distributed import LocalCluster
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


def dask_outcomes(items: Iterable, settings: BatchSettings) -> Iterator[SliceOutcome]:
    """Submit slices as tasks, yield their outcomes as they finish (in any order)."""
    from distributed import as_completed

    with connect(settings) as client:
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        window = 2 * n_workers
        source = iter(items)
        running = as_completed()
        labels: dict = {}

        held = []  # a barrier met while tasks before it still run

        def fill() -> list:
            passed = []
            while running.count() < window:
                item = held.pop() if held else next(source, None)
                if item is None:
                    break
                if isinstance(item, Barrier):
                    if not item.ready() and (running.count() or passed):  # its reference is still out
                        held.append(item)
                        break
                    continue
                if isinstance(item, SliceOutcome):  # failed before it could be sent (unreadable slice)
                    passed.append(item)
                    continue
                future = client.submit(run_slice_logged, item, settings, pure=False)
                labels[future.key] = (item.key, item.index)
                running.add(future)
            return passed

        while True:
            passed = fill()
            yield from passed
            if not running.count():
                if held or passed:  # a barrier waits for the outcomes just handed over
                    continue
                break
            future = next(running)
            key, index = labels.pop(future.key)
            try:
                outcome, records = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. a worker died repeatedly on this slice
                outcome, records = SliceOutcome(key, index, "failed", error=f"Dask task failed: {type(err).__name__}: {err}"), []
            for name, level, message in records:  # into this process's log, as a local run writes them
                logging.getLogger(name).log(level, "%s", message)
            future.release()
            yield outcome


#: The loggers whose records a slice's task sends back: the package's, as ``recon-batch.log`` takes them.
PACKAGE_LOGGERS = ("recon", "operators")


def run_slice_logged(item, settings: BatchSettings) -> tuple:
    """:func:`run_slice` in a worker, with the package's log records (INFO and above) of the slice:
    ``(outcome, [(logger name, level, message), ...])``. A worker's own logging reaches no file the
    user reads."""
    records: list = []
    handler = _Collect(records)
    loggers = [logging.getLogger(name) for name in PACKAGE_LOGGERS]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        if each.getEffectiveLevel() > logging.INFO:
            each.setLevel(logging.INFO)
    try:
        return run_slice(item, settings), records
    finally:
        for each, level in zip(loggers, levels):
            each.removeHandler(handler)
            each.setLevel(level)


class _Collect(logging.Handler):
    def __init__(self, records: list):
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))
