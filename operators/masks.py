"""Cartesian undersampling masks (phase-encode lines), as in fastMRI's mask functions.

Every pattern keeps a fully sampled centre block of ``round(W * center_fraction)`` columns and
adds outer columns until about ``W / acceleration`` columns are measured:

- ``"random"``: outer columns drawn uniformly (exact count, unlike fastMRI's Bernoulli draw, so
  the acceleration is what was asked for);
- ``"equispaced"``: outer columns on a regular grid with a random offset (fastMRI's adjusted
  spacing, so the total matches the acceleration);
- ``"variable-density"``: outer columns drawn without replacement with probability decaying as
  ``(1 - |k| / k_max)^2`` away from the centre.

Randomness comes from a ``torch.Generator`` seeded with ``seed``: same arguments, same mask.

:data:`PATTERNS` is the one list of the pattern names; the command line and the batch settings read
it from here, and :func:`cartesian_mask` checks against it. Torch is imported inside that function so
that reading the names stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations; cartesian_mask imports it when called
    import torch

#: The mask patterns, the default first.
PATTERNS = ("random", "equispaced", "variable-density")


def cartesian_mask(width: int, acceleration: float, center_fraction: float, pattern: str = "random",
                   seed: int = 0) -> torch.Tensor:
    """Boolean column mask of length ``width``.

    Examples
    --------
    >>> m = cartesian_mask(128, acceleration=4, center_fraction=0.08, pattern="random", seed=0)
    >>> int(m.sum())
    32
    """
    import torch

    from operators._checks import as_positive_float, as_positive_int, as_seed

    width, seed = as_positive_int(width, "width"), as_seed(seed)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if as_positive_float(acceleration, "acceleration") < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if not 0 < as_positive_float(center_fraction, "center_fraction") <= 1:
        raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
    gen = torch.Generator().manual_seed(seed)
    n_low = max(1, round(width * center_fraction))
    n_total = max(n_low, round(width / acceleration))
    mask = torch.zeros(width, dtype=torch.bool)
    start = (width - n_low + 1) // 2
    mask[start:start + n_low] = True
    n_extra = n_total - n_low
    outside = torch.nonzero(~mask).flatten()
    if n_extra <= 0 or outside.numel() == 0:
        return mask
    n_extra = min(n_extra, outside.numel())
    if pattern == "random":
        chosen = outside[torch.randperm(outside.numel(), generator=gen)[:n_extra]]
    elif pattern == "variable-density":
        distance = (outside.to(torch.float64) - width // 2).abs() / (width / 2)
        weights = (1.0 - distance).clamp_min(0.0) ** 2 + 1e-6
        chosen = outside[torch.multinomial(weights, n_extra, replacement=False, generator=gen)]
    else:  # equispaced
        spacing = (width - n_low) / n_extra
        offset = float(torch.rand((), generator=gen)) * spacing
        positions = torch.round(offset + spacing * torch.arange(n_extra, dtype=torch.float64)).long()
        chosen = outside[positions.clamp(0, outside.numel() - 1)]
    mask[chosen] = True
    return mask
