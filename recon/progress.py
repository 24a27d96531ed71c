"""One progress protocol for all long work: steps.

Every method is a generator (k-diffusion's sampler shape, plus ``yield``): it yields a :class:`Step`
after each step and returns its samples. :func:`recon.reconstruct_steps` is the whole reconstruction
as such a generator, returning the Result. Whoever drives it decides what a step means: ``reconstruct``
hands each one to ``callback(step, total, preview)`` (the CLI draws a progress bar, ``recon batch``
logs progress inside a slice), the viewer wraps the generator in napari's ``thread_worker``. Stopping
is simply not asking for the next step; a callback may also raise :class:`Cancelled`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Generator, Optional

ProgressCallback = Callable[[int, int, Optional[Any]], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop the running reconstruction."""


@dataclass(frozen=True)
class Step:
    """``step`` of ``total`` done; ``preview`` the current estimate (mean over the samples) or ``None``."""

    step: int
    total: int
    preview: Any = None

    @classmethod
    def of(cls, done: int, total: int, estimate: Any = None) -> "Step":
        """The step whose preview is ``estimate`` (K samples, ``(K, C, H, W)``) averaged over the samples."""
        return cls(int(done), int(total), None if estimate is None else estimate.detach().mean(0, keepdim=True))


Steps = Generator[Step, None, Any]


def run_steps(steps: Steps, callback: Optional[ProgressCallback] = None):
    """Drive ``steps`` to its end, handing each step to ``callback``; return the generator's value."""
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return finished.value
        if callback is not None:
            callback(done.step, done.total, done.preview)


def relabel(steps: Steps, change: Callable[[Step], Step]) -> Steps:
    """``steps`` with each step passed through ``change`` (e.g. offset within a longer job); same value."""
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return finished.value
        yield change(done)


def tqdm_callback(desc: str = "reconstruct", disable: Optional[bool] = None) -> ProgressCallback:
    """A callback that draws a tqdm bar; quiet when stderr is not a terminal (``disable=None``)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not sys.stderr.isatty()
    bar = {"bar": None}

    def callback(step: int, total: int, preview: Any = None) -> None:
        if bar["bar"] is None or bar["bar"].total != total:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(total=total, desc=desc, disable=disable, leave=False)
        bar["bar"].n = step
        bar["bar"].refresh()
        if step >= total:
            bar["bar"].close()

    return callback


class RunProgress:
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
