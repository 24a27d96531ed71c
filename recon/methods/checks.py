"""Option value checks shared by the methods: one place that says what counts as a number.

``reconstruct`` runs them before any work starts, and ``recon batch`` before the first slice, so a
bad value fails once with its name, not deep inside a run (or once per slice).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

#: Upper bound of counts (steps, iterations, samples per chunk): far above any useful run, far below
#: what would exhaust memory or never end.
MAX_COUNT = 100_000


def _is_real(value) -> bool:
    """Python and NumPy ints and floats (and 0-d arrays of them); not bools."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_number(name: str, value, low: float, low_inclusive: bool = True, high: float = math.inf) -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` and the allowed range."""
    ok = _is_real(value) and math.isfinite(float(value))
    ok = ok and (float(value) >= low if low_inclusive else float(value) > low) and float(value) <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_number_or_auto(name: str, value, low: float, low_inclusive: bool = True):
    """``"auto"`` as it is (an option chosen per scan by held-out data), else :func:`check_number`."""
    if isinstance(value, str) and value == "auto":
        return value
    bound = ">=" if low_inclusive else ">"
    return check_number(f"{name} (a number {bound} {low:g} or 'auto')", value, low, low_inclusive)


def check_int(name: str, value, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (Python or NumPy integer, not a bool), or ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer >= {low} and <= {high}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value, high: int = MAX_COUNT) -> int:
    """``value`` as an int in ``[1, high]``, or ``ValueError`` naming ``name``.

    The bound keeps a typo (``steps=10**12``) from allocating terabytes after work has started.
    """
    return check_int(name, value, 1, high)
