"""napari writer: save an image layer (a result's mean or std, any image) as NIfTI for other tools.

The layer's scale becomes the voxel size and its translate the origin, so a volume opened in 3D
Slicer, ITK-SNAP or FSL keeps its proportions and place. An existing file is never replaced. The
refusals are ``FileExistsError`` and ``TypeError``, not ``ValueError``: napari takes a writer's
``ValueError`` for "not my kind of file" and shows only that no writer fits, not why.
"""

from __future__ import annotations

import os

import numpy as np


def write_nifti_layer(path: str, data, meta: dict) -> list[str]:
    """Write one image layer ``(H, W)`` or ``(N, H, W)`` to ``path`` (``.nii`` / ``.nii.gz``); returns ``[path]``."""
    from recon.io.nifti import write_nifti

    array = np.asarray(data)
    if array.ndim not in (2, 3) or meta.get("rgb"):
        raise TypeError(f"NIfTI export takes a 2-D image or a stack of slices, got a layer of shape {array.shape}"
                        f"{' (RGB)' if meta.get('rgb') else ''}")
    if _turned(meta):
        raise TypeError("the layer is rotated, sheared or has an affine of its own; NIfTI export here writes "
                        "scale and translate only: reset them, or use recon export for a result's geometry")
    scale = list(meta.get("scale") or [1.0] * array.ndim)[-array.ndim:]
    shift = list(meta.get("translate") or [0.0] * array.ndim)[-array.ndim:]
    spacing = ([1.0] + scale) if array.ndim == 2 else scale  # (slice, row, column)
    origin = ([0.0] + shift) if array.ndim == 2 else shift
    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    affine[:3, 3] = [float(origin[2]), float(origin[1]), float(origin[0])]  # NIfTI's (column, row, slice)
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists; it is not replaced: choose another name or remove it first")
    try:
        return [write_nifti(path, array, affine=affine)]
    except ValueError as err:  # a name that is not .nii, ... (a file that appeared meanwhile: FileExistsError)
        raise TypeError(str(err)) from None


def _turned(meta: dict) -> bool:
    """Whether the layer has a rotation, a shear or an affine beyond scale and translate."""
    for key in ("rotate", "shear", "affine"):
        value = meta.get(key)
        if value is None:
            continue
        value = np.asarray(getattr(value, "affine_matrix", value), dtype=np.float64)
        identity = np.eye(value.shape[0]) if value.ndim == 2 and value.shape[0] == value.shape[1] else None
        if identity is not None and not np.allclose(value, identity):
            return True
        if identity is None and value.ndim <= 1 and np.any(value != 0):  # a shear vector
            return True
    return False
