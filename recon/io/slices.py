"""The :class:`Volume` every reader returns, and the checks its slices pass.

It lives apart from the readers so that each of them (``recon.io.dicom``, ``recon.io.nifti``) and
the dispatch over them (``recon.io.volume``) import it in one direction only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: NIfTI's names for the spaces an affine can map into (its sform and qform codes 1-4)
SPACES = ("scanner", "aligned", "talairach", "mni")


@dataclass
class Volume:
    """Slices read from a user's files, with what the files say about them.

    Attributes
    ----------
    data : float32 ``(N, H, W)``
        The slices (a single image has ``N = 1``), in the file's units after its rescale tags.
    affine : float64 ``(4, 4)``, optional
        Voxel index ``(column, row, slice)`` to RAS+ mm (NIfTI's convention); None when unknown.
    units : str, optional
        ``"HU"`` for CT DICOM (Hounsfield units from RescaleSlope / RescaleIntercept), else None.
    modality : str, optional
        DICOM ``Modality`` (``"CT"``, ``"MR"``, ...), ``"MR"``/``"CT"`` nowhere else.
    sources : list of str
        The files read, in slice order.
    dicom : dict
        For a DICOM source, what a derived series keeps: patient and study identity, frame of reference.
    space : str, optional
        What the affine's mm are measured from, by NIfTI's name for it (:data:`SPACES`): ``"scanner"`` for
        a DICOM's patient coordinates, a NIfTI's own code; None when unknown or without an affine.
    """

    data: np.ndarray
    affine: Optional[np.ndarray] = None
    units: Optional[str] = None
    modality: Optional[str] = None
    sources: list = field(default_factory=list)
    dicom: dict = field(default_factory=dict)
    space: Optional[str] = None

    @property
    def spacing(self) -> Optional[tuple]:
        """Voxel size in mm along ``(slice, row, column)``; None without geometry."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine) -> Optional[tuple]:
    """Voxel size in mm along ``(slice, row, column)``, the arrays' axes, of an affine on NIfTI's ``(column,
    row, slice)`` voxel axes; None without one."""
    if affine is None:
        return None
    affine = np.asarray(affine, dtype=np.float64)
    column, row, slice_ = (float(np.linalg.norm(affine[:3, axis])) for axis in range(3))
    return slice_, row, column


def places_voxels(affine) -> bool:
    """Whether ``affine`` is a finite 4 x 4 matrix whose voxel axes have length and span space: one that
    does not (an sform of zeros, NaN) says nothing about where the voxels are, and nibabel refuses to
    write it."""
    affine = np.asarray(affine, dtype=np.float64)
    return affine.shape == (4, 4) and bool(np.isfinite(affine).all()) and abs(np.linalg.det(affine[:3, :3])) >= 1e-12


def as_slices(array, source: str) -> np.ndarray:
    """``array`` as float32 ``(N, H, W)``: an image gains a slice axis, a channel axis of one is dropped."""
    array = np.asarray(array)
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{source}: images must be real numbers, got an array of dtype {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0:
        raise ValueError(f"{source}: expected an image (H, W) or slices (N, H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{source}: {int((~np.isfinite(array)).sum())} values are NaN or Inf")
    largest = float(np.abs(array).max()) if array.dtype.kind == "f" else 0.0
    if largest > float(np.finfo(np.float32).max):  # float32 would make them Inf
        raise ValueError(f"{source}: values up to {largest:.3g} do not fit the float32 the images are computed in "
                         f"(at most {np.finfo(np.float32).max:.3g}); rescale them first")
    return array.astype(np.float32)
