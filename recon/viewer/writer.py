"""napari writer: save an image layer (a result's mean or std, any image) as NIfTI for other tools.

The layer's scale becomes the voxel size, so a volume opened in 3D Slicer, ITK-SNAP or FSL keeps its
proportions. An existing file is never replaced: napari shows the error instead.
"""

from __future__ import annotations

import numpy as np


def write_nifti_layer(path: str, data, meta: dict) -> list[str]:
    """Write one image layer ``(H, W)`` or ``(N, H, W)`` to ``path`` (``.nii`` / ``.nii.gz``); returns ``[path]``."""
    from recon.io.nifti import write_nifti

    array = np.asarray(data)
    if array.ndim not in (2, 3) or meta.get("rgb"):
        raise ValueError(f"NIfTI export takes a 2-D image or a stack of slices, got a layer of shape {array.shape}"
                         f"{' (RGB)' if meta.get('rgb') else ''}")
    scale = list(meta.get("scale") or [1.0] * array.ndim)[-array.ndim:]
    spacing = ([1.0] + scale) if array.ndim == 2 else scale  # (slice, row, column)
    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    return [write_nifti(path, array, affine=affine)]
