"""Coil sensitivity maps from the fully sampled k-space centre (low-resolution ratio method).

Multi-coil fastMRI files do not ship sensitivity maps, so they are estimated per slice from the
auto-calibration region (ACS): the contiguous block of sampled phase-encoding columns around the
k-space centre. Each coil's ACS data, tapered with a Hann window (along the phase-encoding axis over
the ACS width, and along the readout axis over a band of the same relative width, so that the
low-resolution images are blurred about equally in both directions), is transformed to a
low-resolution coil image ``c_j``; the maps are ``S_j = c_j / sqrt(sum_k |c_k|^2)``. They are
smooth, their root-sum-of-squares is one wherever there is signal, and the SENSE combination
``sum_j conj(S_j) x_j`` of fully sampled coil images is then close to fastMRI's RSS image.

This is simpler than ESPIRiT (no eigen-decomposition, no support mask): maps are less accurate
near the object's edge, which costs a little PSNR there, not correctness.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def centered_ifft2(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's centred orthonormal inverse FFT over the last two axes."""
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def sampled_columns(kspace: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean ``(W,)``: the phase-encoding columns that were measured."""
    if mask is not None:
        mask = np.asarray(mask)
        return (mask.reshape(-1, mask.shape[-1]).max(axis=0) if mask.ndim > 1 else mask) > 0
    flat = np.abs(kspace).reshape(-1, kspace.shape[-1])
    return flat.max(axis=0) > 0


def acs_range(columns: np.ndarray) -> tuple[int, int]:
    """``(start, stop)`` of the contiguous run of sampled columns through the centre column."""
    centre = len(columns) // 2
    if not columns[centre]:
        return centre, centre
    start, stop = centre, centre + 1
    while start > 0 and columns[start - 1]:
        start -= 1
    while stop < len(columns) and columns[stop]:
        stop += 1
    return start, stop


def estimate_sensitivity_maps(kspace: np.ndarray, mask: Optional[np.ndarray] = None, eps: float = 1e-8) -> np.ndarray:
    """Maps ``(coils, H, W)`` complex64 from multi-coil k-space ``(coils, H, W)``.

    Raises
    ------
    ValueError
        If the k-space is not 3-D or has fewer than 4 fully sampled centre columns.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 3:
        raise ValueError(f"multi-coil k-space should be (coils, H, W), got shape {kspace.shape}")
    height, width = kspace.shape[-2:]
    start, stop = acs_range(sampled_columns(kspace, mask))
    n_acs = stop - start
    if n_acs < 4:
        raise ValueError(f"cannot estimate coil sensitivities: only {n_acs} fully sampled centre columns (need >= 4)")
    window_w = np.zeros(width)
    window_w[start:start + n_acs] = np.hanning(n_acs + 2)[1:-1]
    n_rows = max(4, min(height, int(round(n_acs * height / width))))
    row_start = height // 2 - n_rows // 2
    window_h = np.zeros(height)
    window_h[row_start:row_start + n_rows] = np.hanning(n_rows + 2)[1:-1]
    low = centered_ifft2(kspace * (window_h[:, None] * window_w[None, :]))
    rss = np.sqrt((np.abs(low) ** 2).sum(axis=0))
    return (low / np.maximum(rss, eps * rss.max() + 1e-30)).astype(np.complex64)
