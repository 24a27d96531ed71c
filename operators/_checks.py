"""Input validation shared by every operator.

Each operator checks its inputs before any work, so a wrong shape, dtype or a NaN in a measurement
fails loudly with a message naming what was expected and what came, instead of broadcasting silently.
"""

from __future__ import annotations

import math
import numbers

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64)  # ASTRA and CPU FFTs have no half precision


#: Upper bound of angles, detector bins and pixels per side: far above any scanner, far below a size
#: that would exhaust memory (a tiny detector spacing used to ask for 4.5e10 bins).
MAX_SIZE = 100_000
#: Upper bound of an image's pixels (all axes together): 4 GiB of float32, far above any slice or volume
#: a scanner makes; a side of 100,000 alone would ask for 37 GiB once work had started.
MAX_PIXELS = 2**30


def as_image_size(image_size, name: str = "image_size", ndim: int = 2) -> tuple:
    """Normalise ``image_size`` (int or ``ndim`` ints, e.g. ``(H, W)``) to a tuple of positive ints."""
    if isinstance(image_size, (str, bytes)):  # a str is iterable: "32" would become (3, 2)
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got the string {image_size!r}")
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):  # NumPy's too
        image_size = (image_size,) * ndim
    try:
        size = tuple(int(s) for s in image_size)
        integral = all(float(s) == i and not isinstance(s, bool) for s, i in zip(image_size, size))
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {image_size!r}") from None
    except ValueError:  # NaN or Inf
        integral = False
    if not integral or len(size) != ndim or min(size) < 1 or max(size) > MAX_SIZE:
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints in [1, {MAX_SIZE}], got {image_size!r}")
    if math.prod(size) > MAX_PIXELS:
        raise ValueError(f"{name} {size} has {math.prod(size):,} pixels, more than the {MAX_PIXELS:,} an image may have")
    return size


def as_positive_int(value, name: str, high: int = MAX_SIZE) -> int:
    """``value`` as an int in ``[1, high]``; a fractional, non-finite or non-numeric value raises ``ValueError``."""
    try:
        number = float(value)
        ok = number.is_integer() and 1 <= number <= high
    except (TypeError, ValueError):
        ok = False
    if isinstance(value, (bool, str, bytes)) or not ok:
        raise ValueError(f"{name} must be an integer in [1, {high}], got {value!r}")
    return int(number)


def as_seed(value, name: str = "seed") -> int:
    """``value`` as an int >= 0 (Python or NumPy integer): ``seed=1.5`` used to draw seed 1's mask."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def as_positive_float(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); anything else raises ``ValueError``."""
    try:
        number = float(value)
        ok = math.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    except (TypeError, ValueError):
        ok = False
    if isinstance(value, (bool, str, bytes)) or not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return number


def check_tensor(t, expected_shape: tuple, what: str, owner: str, finite: bool = False) -> None:
    """Raise if ``t`` is not a real float tensor of shape ``(B, *expected_shape)``.

    Parameters
    ----------
    t : object
        The value to check.
    expected_shape : tuple
        Shape without the batch axis.
    what : str
        "image" or "measurement", used in the message.
    owner : str
        Name of the operator, used in the message.
    finite : bool
        Also reject NaN and Inf (done for measurements, which come from files and users).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{owner}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{owner}: {what} must be a real floating tensor (float32 or float64), got dtype {t.dtype}"
        )
    expected = ("B",) + tuple(expected_shape)
    if t.ndim != len(expected) or tuple(t.shape[1:]) != tuple(expected_shape) or t.shape[0] == 0:
        raise ValueError(
            f"{owner}: expected {what} of shape {_fmt(expected)} with B >= 1, got {tuple(t.shape)}"
        )
    if finite and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{owner}: {what} contains {n_bad} NaN or Inf values")


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
