"""A user's images as slices: :func:`read_images` reads any format below into one
:class:`~recon.io.slices.Volume`.

Formats, recognised by name (and a DICOM file also by its ``DICM`` marker):

=====================  ==========================================================================
DICOM file or folder   a series: slices in patient order, Hounsfield units for CT (``recon.io.dicom``)
``.nii``, ``.nii.gz``  a NIfTI volume: slices along its third axis (``recon.io.nifti``)
``.png``, ``.tif(f)``  one image (colour or palette -> grey), or a multi-page TIFF's pages as slices
``.jpg``, ``.jpeg``
``.npy``               ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` real numbers
=====================  ==========================================================================

A ``.npy`` of shape ``(H, W, 3)`` or ``(H, W, 4)`` is refused: it is far more likely one colour picture
than ``H`` slices 3 or 4 pixels wide, and the array alone cannot say which.

Geometry is one affine for every format (NIfTI's convention): it maps the voxel index
``(column, row, slice, 1)`` to RAS+ millimetres; ``data[k, j, i]`` is the voxel ``(i, j, k)``.
Formats without geometry (PNG, TIFF, ``.npy``) have ``affine=None``.

The readers import this module's :class:`Volume` from ``recon.io.slices``, never this module, so
the dispatch here can import them directly; they load pydicom and nibabel only when they read.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from recon.io.dicom import read_dicom
from recon.io.nifti import read_nifti
from recon.io.slices import NIFTI_SUFFIXES, Volume, as_slices

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "NIFTI_SUFFIXES", "Volume", "as_slices", "image_format", "read_images"]

PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
FORMATS = "a DICOM file or folder, NIfTI (.nii, .nii.gz), PNG, TIFF, JPEG or .npy"


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
    if is_dicom_file(path):
        return "dicom"
    raise ValueError(f"{path}: unknown image format {os.path.splitext(name)[1] or '(no suffix)'!r}; expected {FORMATS}")


def _has_dicom_marker(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_file(path: str) -> bool:
    """Whether the regular file ``path`` is DICOM, by its suffix or its ``DICM`` marker (as a folder is read)."""
    return os.path.isfile(path) and (os.path.basename(path).lower().endswith(DICOM_SUFFIXES)
                                     or _has_dicom_marker(path))


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
        return read_dicom(path)
    if kind == "nifti":
        return read_nifti(path)
    if kind == "npy":
        array = load_npy(path)
        _refuse_colour_channels(array, path)
        return Volume(as_slices(array, path), sources=[path])
    return Volume(as_slices(_load_picture(path), path), sources=[path])


#: An array ``(A, B, 3 or 4)`` with ``A`` and ``B`` at least this large is taken for a colour picture, not slices.
COLOUR_PICTURE_SIDE = 8


def _refuse_colour_channels(array: np.ndarray, path: str) -> None:
    """Refuse an array that is most likely an RGB(A) picture ``(H, W, 3 or 4)``, not ``H`` slices of ``W x 3``.

    Nothing in a ``.npy`` says which axis holds colour, so this does not guess: it names the likely
    cause and the two ways to pass the array unambiguously.
    """
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < COLOUR_PICTURE_SIDE:
        return
    height, width, channels = array.shape
    colour = "RGB" if channels == 3 else "RGBA"
    raise ValueError(f"{path}: shape {array.shape} would be {height} slices of {width} x {channels} pixels, but it is "
                     f"most likely one {height} x {width} {colour} picture (colour on the last axis), and the array "
                     f"cannot say which; save it as one grey image (H, W), e.g. skimage.color.rgb2gray(array[..., :3]), or, "
                     f"to read the channels as slices, transposed to ({channels}, H, W) (slices first)")


#: The first bytes of every ``.npy`` file.
NPY_MAGIC = b"\x93NUMPY"


def load_npy(path) -> np.ndarray:
    """The array of a ``.npy`` file, never unpickled; a ``ValueError`` naming the file otherwise.

    For a file without the ``.npy`` header NumPy's own message speaks of pickled data and
    ``allow_pickle``, which sends a user the wrong way: this says what the file is instead.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(NPY_MAGIC))
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if head != NPY_MAGIC:
        raise ValueError(f"cannot read {path}: not a NumPy .npy file (it does not start with the .npy header)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"cannot read {path}: it holds Python objects, not numbers, and diffrecon "
                             f"does not unpickle files") from None
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from None
    except (OSError, EOFError) as err:  # truncated, damaged
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from None


def _load_picture(path: str) -> np.ndarray:
    """A picture as an array; colour (RGB, RGBA) becomes grey in [0, 1], a TIFF's pages become slices.

    A palette picture is read through its palette (its pixels are indices into it, not grey values):
    imageio does so for PNG, this for TIFF. A TIFF of integer samples whose photometric tag says RGB
    is a colour picture however its samples are laid out: in separate planes (PlanarConfiguration 2,
    ``(3, H, W)`` from tifffile) they are moved to the last axis, so it becomes one grey image as the
    contiguous file does, not three slices (with a warning: a bare ``(3, H, W)`` integer array written
    with tifffile's or skimage's defaults is tagged so). Float samples in separate planes stay slices:
    no camera writes float RGB planes, while a float ``(3 or 4, H, W)`` stack written with tifffile's
    defaults (as ``recon export`` did before 0.17.0) is tagged RGB. Slices are MINISBLACK pages.
    """
    import skimage.io
    from skimage.color import rgb2gray, rgba2rgb

    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                image = np.asarray(tiff.asarray()) if len(tiff.series) == 1 else _stacked_series(path, tiff)
                page = tiff.pages[0]
                if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:  # 0 is white: brighter must be larger
                    image = (~image if image.dtype.kind == "b" else np.iinfo(image.dtype).max - image
                             if image.dtype.kind == "u" else -image)
                colour = page.photometric in (tifffile.PHOTOMETRIC.RGB,)
                axes = tiff.series[0].axes
                if colour and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and "S" in axes:
                    if image.dtype.kind == "f":  # a float stack written with tifffile's defaults: slices
                        colour = False  # its planes lead the axes, so they are not samples of a pixel below
                    else:
                        image, axes = np.moveaxis(image, axes.index("S"), -1), axes.replace("S", "") + "S"
                        logger.warning("%s: tagged RGB in separate planes, read as one colour picture turned grey; "
                                       "a stack of %d slices must be written with photometric='minisblack' to "
                                       "read as slices", path, image.shape[-1])
                samples = axes.endswith("S")  # samples of a pixel on the last axis, never slices
                if page.photometric == tifffile.PHOTOMETRIC.PALETTE:  # indices -> the palette's RGB, last axis
                    image, colour = _palette_rgb(image, page.colormap), True
        else:
            image = np.asarray(skimage.io.imread(path))
            colour = image.ndim == 3 and image.shape[-1] in (3, 4)
            samples = image.ndim == 3 and image.shape[-1] in (2, 3, 4)
    except Exception as err:  # noqa: BLE001 - imageio/tifffile/PIL raise many types for a damaged file
        raise ValueError(f"cannot read {path} as an image: {type(err).__name__}: {err}") from None
    if samples and image.shape[-1] == 2:  # grey and alpha: composited like RGBA, so (H, W, 2) is not 2-wide slices
        image = np.concatenate([np.repeat(image[..., :1], 3, axis=-1), image[..., 1:]], axis=-1)
        colour = True
    if colour and image.shape[-1] in (3, 4):
        image = rgb2gray(rgba2rgb(image) if image.shape[-1] == 4 else image)
    elif samples:
        raise ValueError(f"{path}: {image.shape[-1]} samples per pixel that are not RGB, RGBA or grey with alpha; "
                         "save it as a grey image")
    return image


def _stacked_series(path: str, tiff) -> np.ndarray:
    """The slices of a TIFF written page by page (each page a series of its own, as tifffile's
    ``append=True`` writes): stacked when every series is one grey image of one shape and type, else
    refused (``asarray`` reads the first series alone, so the others were dropped without a word)."""
    kinds = {(tuple(series.shape), str(series.dtype), series.axes) for series in tiff.series}
    if len(kinds) > 1 or next(iter(kinds))[2] != "YX":
        raise ValueError(f"{len(tiff.series)} image series of other shapes, types or layouts "
                         f"({', '.join(sorted(str(k[0]) for k in kinds))}); save one series of equal grey slices")
    return np.stack([series.asarray() for series in tiff.series])


def _palette_rgb(indices: np.ndarray, colormap) -> np.ndarray:
    """The 8-bit RGB (last axis) a palette TIFF's indices stand for.

    TIFF palettes hold 16-bit entries, which writers fill from 8-bit colours (times 256 or 257): the
    high byte is the colour, as libtiff reads it, so white is 1.0 as in a PNG. Entries all below 256
    (from writers that stored 8-bit values as they are) are taken as 8-bit.
    """
    colormap = np.asarray(colormap)
    if colormap.max() >= 256:
        colormap = colormap >> 8
    return colormap.astype(np.uint8).T[indices]


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
