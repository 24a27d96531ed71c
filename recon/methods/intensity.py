"""Mapping between the user's intensity units and the prior's [0, 1] range.

Real scans are not in [0, 1] (Hounsfield units, raw k-space scaling). The rule, applied by
:func:`recon.reconstruct`:

1. Take ``(lo, hi)`` from the user (``intensity_range=(lo, hi)``) or, by default, as the 0.5 and 99.5
   percentiles of the initial estimate ``A_dagger(y)`` after a 5x5 median filter (the filter removes
   most thin FBP streaks and ringing, which would otherwise push ``lo`` below the true background and
   shift the image away from what the prior knows). For complex images (``complex_images=True``) ``lo = 0`` and ``hi`` is the 99.5 percentile of the
   magnitude, so the phase is kept.
2. Work on ``x' = (x - lo) / (hi - lo)``. Because ``A`` is linear, its measurement is
   ``y' = (y - A(lo * 1)) / (hi - lo)``: the offset goes through ``A`` applied to a constant image.
   Measurement noise std scales by ``1 / (hi - lo)`` too.
3. Results come back as ``x = lo + (hi - lo) x'``; standard deviations as ``(hi - lo) std'``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (0.5, 99.5)
MEDIAN_SIZE = 5


@dataclass(frozen=True)
class IntensityMap:
    """Affine map ``x' = (x - lo) / (hi - lo)`` between user units and the prior's range."""

    lo: float
    hi: float
    complex_images: bool = False  # (B, 2, ...) real/imaginary images: ``lo`` shifts the real part only

    @property
    def scale(self) -> float:
        return self.hi - self.lo

    @classmethod
    def from_estimate(cls, estimate: torch.Tensor, complex_images: bool = False, percentiles=DEFAULT_PERCENTILES) -> "IntensityMap":
        """Robust range of an initial estimate (see module docstring)."""
        values = estimate.detach().float()
        if complex_images and values.shape[1] == 2:
            values = _median_filtered(values.pow(2).sum(1, keepdim=True).sqrt())
            lo, hi = 0.0, float(torch.quantile(values.flatten()[:_QUANTILE_LIMIT], percentiles[1] / 100))
        else:
            values = _median_filtered(values)
            flat = values.flatten()[:_QUANTILE_LIMIT]
            lo = float(torch.quantile(flat, percentiles[0] / 100))
            hi = float(torch.quantile(flat, percentiles[1] / 100))
        if not hi > lo:
            width = max(abs(lo), 1.0)
            logger.warning("initial estimate is constant (%g); using range (%g, %g)", lo, lo, lo + width)
            hi = lo + width
        return cls(lo, hi, complex_images)

    def _offset(self, x: torch.Tensor):
        """``lo`` as an image: a constant real image has no imaginary part (as in measurement_to_prior)."""
        if self.complex_images and x.dim() > 1 and x.shape[1] == 2 and self.lo != 0.0:
            offset = torch.zeros((1, 2) + (1,) * (x.dim() - 2), dtype=x.dtype, device=x.device)
            offset[:, 0] = self.lo
            return offset
        return self.lo

    def to_prior(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._offset(x)) / self.scale

    def from_prior(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self._offset(x)

    def measurement_to_prior(self, physics, y: torch.Tensor, image_shape) -> torch.Tensor:
        """``y' = (y - A(lo * 1)) / (hi - lo)``; ``image_shape`` is ``(C, H, W)`` without batch."""
        if self.lo == 0.0:
            return y / self.scale
        constant = torch.full((1, *image_shape), self.lo, dtype=y.dtype, device=y.device)
        if len(image_shape) and image_shape[0] == 2 and getattr(physics, "complex_images", False):
            constant[:, 1] = 0.0  # a constant real image has no imaginary part
        return (y - physics.A(constant)) / self.scale


def _median_filtered(images: torch.Tensor, size: int = MEDIAN_SIZE) -> torch.Tensor:
    """Median filter over the spatial axes of ``(B, C, *spatial)`` images (scipy, on the CPU)."""
    from scipy.ndimage import median_filter

    array = images.cpu().numpy()
    window = (1, 1) + (size,) * (array.ndim - 2)
    return torch.from_numpy(median_filter(array, size=window, mode="nearest"))


_QUANTILE_LIMIT = 16_000_000  # torch.quantile refuses larger inputs; the first 16M values are plenty
