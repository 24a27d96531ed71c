"""Image quality scores, defined once. Each caller states its convention instead of re-deriving PSNR.

Conventions differ on purpose: images in [0, 1] are scored with a peak of 1 (``data_range=1``);
data in its own units (a batch's ground truth, a viewer job's phantom) with the reference's range
(``data_range=None``); a denoiser's output may be clipped to [0, 1] first (``clip=(0, 1)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so that scoring arrays stays light
    import torch


def psnr(estimate, reference, data_range: Optional[float] = 1.0, clip: Optional[tuple] = None) -> float:
    """PSNR in dB of ``estimate`` against ``reference`` (``inf`` when they are equal).

    ``data_range``: the peak of the scale; ``None`` takes the reference's peak-to-peak range (1 if flat).
    ``clip``: ``(lo, hi)`` to clip the estimate to before scoring.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if estimate.shape != reference.shape:
        raise ValueError(f"PSNR needs equal shapes, got estimate {estimate.shape} and reference {reference.shape}")
    if clip is not None:
        estimate = np.clip(estimate, *clip)
    if data_range is None:
        data_range = float(reference.max() - reference.min()) or 1.0
    mse = float(np.mean((estimate - reference) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def psnr_per_image(estimate: "torch.Tensor", reference: "torch.Tensor") -> "torch.Tensor":
    """PSNR in dB of each image of a batch ``(B, ...)`` in [0, 1] units, estimate clipped to [0, 1];
    stays on the tensors' device (validation during training). Floors the MSE at 1e-12 (120 dB)."""
    import torch

    mse = ((estimate.clamp(0, 1) - reference) ** 2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse.clamp_min(1e-12))
