"""A user's images as slices: :class:`Volume` and :func:`read_images`, whatever the file format.

Formats, recognised by name (and a DICOM file also by its ``DICM`` marker):

=====================  ==========================================================================
DICOM file or folder   a series: slices in patient order, Hounsfield units for CT (``recon.io.dicom``)
``.nii``, ``.nii.gz``  a NIfTI volume: slices along its third axis (``recon.io.nifti``)
``.png``, ``.tif(f)``  one image (colour -> grey), or a multi-page TIFF's pages as slices
``.jpg``, ``.jpeg``
``.npy``               ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` real numbers
=====================  ==========================================================================

Geometry is one affine for every format (NIfTI's convention): it maps the voxel index
``(column, row, slice, 1)`` to RAS+ millimetres; ``data[k, j, i]`` is the voxel ``(i, j, k)``.
Formats without geometry (PNG, TIFF, ``.npy``) have ``affine=None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
FORMATS = "a DICOM file or folder, NIfTI (.nii, .nii.gz), PNG, TIFF, JPEG or .npy"


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
    """

    data: np.ndarray
    affine: Optional[np.ndarray] = None
    units: Optional[str] = None
    modality: Optional[str] = None
    sources: list = field(default_factory=list)
    dicom: dict = field(default_factory=dict)

    @property
    def spacing(self) -> Optional[tuple]:
        """Voxel size in mm along ``(slice, row, column)``; None without geometry."""
        if self.affine is None:
            return None
        column, row, slice_ = (float(np.linalg.norm(self.affine[:3, axis])) for axis in range(3))
        return slice_, row, column


def image_format(path) -> str:
    """``"dicom"``, ``"nifti"``, ``"picture"`` or ``"npy"`` for ``path``; ValueError for anything else."""
    path = os.fspath(path)
    name = os.path.basename(path.rstrip(os.sep)).lower()
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist; expected {FORMATS}")
    if os.path.isdir(path):
        return "dicom"
    if not os.path.isfile(path):  # a FIFO or device would block the readers
        raise ValueError(f"{path} is not a regular file; expected {FORMATS}")
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(DICOM_SUFFIXES) or _has_dicom_marker(path):
        return "dicom"
    raise ValueError(f"{path}: unknown image format {os.path.splitext(name)[1] or '(no suffix)'!r}; expected {FORMATS}")


def _has_dicom_marker(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_images(paths) -> Volume:
    """Read one or more image files (or DICOM folders) as one :class:`Volume` of stacked slices.

    Every path is checked (exists, known format) before any is read. Several paths are stacked in the
    order given and must share the slice size; their geometry is kept only for a single path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "slice.npy")
    >>> np.save(path, np.zeros((32, 40)))
    >>> read_images(path).data.shape
    (1, 32, 40)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError(f"no images given; expected {FORMATS}")
    kinds = [image_format(p) for p in paths]
    volumes = [_read_one(p, kind) for p, kind in zip(paths, kinds)]
    if len(volumes) == 1:
        return volumes[0]
    return _stack(volumes)


def _read_one(path: str, kind: str) -> Volume:
    if kind == "dicom":
        from recon.io.dicom import read_dicom

        return read_dicom(path)
    if kind == "nifti":
        from recon.io.nifti import read_nifti

        return read_nifti(path)
    if kind == "npy":
        return Volume(as_slices(_load_npy(path), path), sources=[path])
    return Volume(as_slices(_load_picture(path), path), sources=[path])


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # not an array file, truncated, pickled objects
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from None


def _load_picture(path: str) -> np.ndarray:
    """A picture as an array; colour (RGB, RGBA) becomes grey in [0, 1], a TIFF's pages become slices."""
    import skimage.io
    from skimage.color import rgb2gray, rgba2rgb

    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                image = np.asarray(tiff.asarray())
                colour = tiff.pages[0].photometric in (tifffile.PHOTOMETRIC.RGB,)
        else:
            image = np.asarray(skimage.io.imread(path))
            colour = image.ndim == 3 and image.shape[-1] in (3, 4)
    except Exception as err:  # noqa: BLE001 - imageio/tifffile/PIL raise many types for a damaged file
        raise ValueError(f"cannot read {path} as an image: {type(err).__name__}: {err}") from None
    if colour and image.shape[-1] in (3, 4):
        image = rgb2gray(rgba2rgb(image) if image.shape[-1] == 4 else image)
    return image


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
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{source}: {int((~np.isfinite(array)).sum())} values are NaN or Inf")
    return array


def _stack(volumes: Sequence[Volume]) -> Volume:
    sizes = {v.data.shape[1:] for v in volumes}
    if len(sizes) > 1:
        listing = ", ".join(f"{v.sources[0]}: {v.data.shape[1:]}" for v in volumes)
        raise ValueError(f"images of different sizes cannot be stacked ({listing}); resize them to one size")
    units = {v.units for v in volumes}
    if len(units) > 1:
        listing = ", ".join(f"{v.sources[0]}: {v.units or 'as stored'}" for v in volumes)
        raise ValueError(f"images in different units cannot be stacked ({listing}); give them separately")
    modalities = {v.modality for v in volumes}
    return Volume(np.concatenate([v.data for v in volumes]), units=units.pop(),
                  modality=modalities.pop() if len(modalities) == 1 else None,
                  sources=[s for v in volumes for s in v.sources])
