"""One progress protocol for all long work.

A method calls ``callback(step, total, preview)`` after each step; ``preview`` is the current estimate
(a tensor in the prior's range, or ``None``). The callback may raise :class:`Cancelled` to stop the work
within one step: the CLI turns the protocol into a progress bar, the viewer into its activity dock and
cancel button.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

ProgressCallback = Callable[[int, int, Optional[Any]], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop the running reconstruction."""


def report(callback: Optional[ProgressCallback], step: int, total: int, preview: Any = None) -> None:
    """Call ``callback`` if there is one; the single place methods go through."""
    if callback is not None:
        callback(step, total, preview)


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
