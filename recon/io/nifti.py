"""NIfTI in and out with nibabel: slices along the volume's third axis, the affine kept as it is.

A volume ``v[x, y, z]`` is read as slices ``data[z, y, x]`` (``data[k, j, i]`` is voxel ``(i, j, k)``),
so :func:`write_nifti` of what :func:`read_nifti` returned gives back the same voxels and affine.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from recon.io.slices import NIFTI_SUFFIXES, SPACES, Volume, as_slices, places_voxels

logger = logging.getLogger(__name__)


def read_nifti(path) -> Volume:
    """A 2-D or 3-D NIfTI image (``.nii`` or ``.nii.gz``) as slices along its third axis, with its affine."""
    import nibabel

    path = os.fspath(path)
    try:
        image = nibabel.load(path)
        complex_data = np.issubdtype(image.get_data_dtype(), np.complexfloating)
        volume = None if complex_data else np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib raise many types for a damaged file
        raise ValueError(f"cannot read {path} as NIfTI: {type(err).__name__}: {err}") from None
    if complex_data:  # get_fdata would drop the imaginary part with only a warning
        raise ValueError(f"{path}: images must be real numbers, got a NIfTI of dtype {image.get_data_dtype()}")
    while volume.ndim > 3 and volume.shape[-1] == 1:  # trailing axes of one (time, or a 5-D header's) hold one volume
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {volume.shape} "
                         "(a time series? give one volume)")
    if 1 in volume.shape[:2] and volume.shape[2] > 1:  # slices one pixel wide: a slice stored along another axis
        raise ValueError(f"{path}: shape {volume.shape} makes slices of {volume.shape[1]} x {volume.shape[0]} "
                         "pixels along the third axis; store the image with its slices along the third axis")
    data = as_slices(np.transpose(volume, (2, 1, 0)), path)
    affine = _affine(path, image)
    return Volume(data, affine=affine, sources=[path], space=_space(image.header) if affine is not None else None)


def _space(header) -> Optional[str]:
    """The space the header's affine maps into, by name: the sform's code, else the qform's (as nibabel picks
    the affine); None for code 0 or a code NIfTI does not define."""
    for key in ("sform_code", "qform_code"):
        code = int(header[key])
        if 1 <= code <= len(SPACES):
            return SPACES[code - 1]
    return None


#: millimetres per unit of a NIfTI header's ``xyzt_units`` (unknown is taken as mm, as viewers do)
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def _affine(path: str, image) -> Optional[np.ndarray]:
    """The image's affine in mm; None (no geometry, with a warning) when it holds NaN or Inf or its voxel axes have
    zero length or lie in one plane. Such a header (an sform of zeros, say) says nothing about where the voxels
    are, as a DICOM PixelSpacing of 0 does not: kept, it gave a spacing of 0 or NaN (``recon simulate --dose``
    divided by it) and a DICOM export wrote NaN orientations."""
    affine = np.asarray(image.affine, dtype=np.float64)
    unit = image.header.get_xyzt_units()[0]
    if places_voxels(affine):  # in mm, as every Volume's: a micron or metre header is converted, not relabelled
        return np.diag([*[_MM_PER_UNIT.get(unit, 1.0)] * 3, 1.0]) @ affine
    logger.warning("%s: its affine %s cannot place voxels (NaN, or voxel axes of zero length or in one plane); "
                   "read without geometry", path, np.round(affine[:3], 6).tolist())
    return None


def write_nifti(path, data, affine: Optional[np.ndarray] = None, overwrite: bool = False,
                space: Optional[str] = None) -> str:
    """Write slices ``data`` ``(N, H, W)`` (or one ``(H, W)`` image) to ``path`` (``.nii`` or ``.nii.gz``).

    ``affine`` maps voxel ``(column, row, slice)`` to RAS+ mm (a :class:`Volume`'s); default: 1 mm
    voxels at the origin. ``space`` (one of :data:`~recon.io.slices.SPACES`, a Volume's) is what those mm
    are measured from; default ``"aligned"`` (NIfTI's code for a space it does not name). The affine goes
    into the sform and, where a rotation and voxel sizes hold it exactly (no shear), the qform too, as
    scanner converters write them: a tool that reads only the qform finds the same geometry. Returns the path.
    """
    import nibabel

    from recon.files import fresh_temp, move_into_place

    path = os.fspath(path)
    if not path.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"a NIfTI file name ends in .nii or .nii.gz, got {path!r}")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite to replace it")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"NIfTI export needs slices (N, H, W), got shape {data.shape}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4 x 4 matrix, got shape {affine.shape}")
    if not places_voxels(affine):  # nibabel's HeaderDataError otherwise, after the checks
        raise ValueError(f"affine {np.round(affine[:3, :3], 6).tolist()} has voxel axes of zero length or in one "
                         "plane; a NIfTI volume needs three independent axes")
    space = "aligned" if space is None else space
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    image = nibabel.Nifti1Image(np.ascontiguousarray(np.transpose(data, (2, 1, 0))), affine)
    image.set_sform(affine, code=space)
    image.set_qform(affine, code=space)
    if not np.allclose(image.get_qform(), affine, rtol=0, atol=1e-4 * max(1.0, np.abs(affine).max())):
        image.set_qform(None, code=0)  # a sheared affine (a tilted gantry's): a qform would only approximate it
    image.header.set_xyzt_units("mm")
    temp = fresh_temp(path)  # the file appears whole or not at all
    suffix = ".nii.gz" if path.lower().endswith(".gz") else ".nii"
    try:
        nibabel.save(image, temp + suffix)
        move_into_place(temp + suffix, path, overwrite, "it was written")
    finally:
        for leftover in (temp, temp + suffix):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path
