"""Input validation shared by every operator.

Each operator checks its inputs before any work, so a wrong shape, dtype or a NaN in a measurement
fails loudly with a message naming what was expected and what came, instead of broadcasting silently.
"""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64)  # ASTRA and CPU FFTs have no half precision


def as_image_size(image_size, name: str = "image_size") -> tuple[int, int]:
    """Normalise ``image_size`` (int or ``(H, W)``) to a tuple of two positive ints."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        size = tuple(int(s) for s in image_size)
        integral = all(float(s) == i for s, i in zip(image_size, size))
    except TypeError:
        raise TypeError(f"{name} must be an int or a (H, W) tuple, got {image_size!r}") from None
    except ValueError:  # NaN or Inf
        integral = False
    if not integral or len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be an int or a (H, W) tuple of positive ints, got {image_size!r}")
    return size


def as_positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; a fractional, non-finite or non-numeric value raises ``ValueError``."""
    try:
        number = float(value)
        ok = number.is_integer() and number >= 1
    except (TypeError, ValueError):
        ok = False
    if isinstance(value, bool) or not ok:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(number)


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
    if t.ndim != len(expected) or tuple(t.shape[1:]) != tuple(expected_shape):
        raise ValueError(
            f"{owner}: expected {what} of shape {_fmt(expected)}, got {tuple(t.shape)}"
        )
    if finite and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{owner}: {what} contains {n_bad} NaN or Inf values")


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
