"""A user's measurement file and geometry as ``(y, operator)`` ready for ``recon.reconstruct``.

What ``recon reconstruct`` accepts, without glue code:

- ``.npy``; ``.h5`` / ``.hdf5`` with a dataset (``file.h5:/group/y`` or ``dataset=``); a sinogram
  stored as TIFF, PNG, NIfTI or DICOM (one slice, read by :func:`recon.io.read_images`);
- CT: a plain ``(angles, detectors)`` sinogram (the channel axis is added) or ``(C, angles, detectors)``;
  angles as a count, an array or a file; detector bins are the sinogram's width;
- MRI: complex k-space ``(H, W)`` (converted to deepinv's two real channels) or real ``(2, H, W)``;
  the mask from a file, from ``acceleration`` (pattern and seed), or from the columns that hold data;
- super-resolution: a low-resolution image ``(h, w)`` or ``(C, h, w)``.

Every check (shapes, counts, a flag that does not apply to the operator) happens here, before any work.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from recon import geometry
from recon.files import HDF5_SUFFIXES
from recon.methods.checks import check_positive_int
from recon.operator_kinds import operator_kind

logger = logging.getLogger(__name__)

#: geometry settings and the operator kinds they apply to
_APPLIES = {
    "size": ("parallel_beam_ct", "fan_beam_ct"), "n_angles": ("parallel_beam_ct", "fan_beam_ct"),
    "angles": ("parallel_beam_ct", "fan_beam_ct"), "n_detectors": ("parallel_beam_ct", "fan_beam_ct"),
    "detector_spacing": ("parallel_beam_ct", "fan_beam_ct"), "pixel_size": ("parallel_beam_ct", "fan_beam_ct"),
    "source_distance": ("fan_beam_ct",), "detector_distance": ("fan_beam_ct",),
    "acceleration": ("cartesian_mri",), "center_fraction": ("cartesian_mri",), "mask_pattern": ("cartesian_mri",),
    "mask_seed": ("cartesian_mri",), "mask": ("cartesian_mri",), "factor": ("super_resolution",),
    "degrees": ("parallel_beam_ct", "fan_beam_ct"),
}


def split_dataset(spec: str, dataset: Optional[str] = None) -> tuple:
    """``"file.h5:/path"`` -> ``("file.h5", "/path")``; a plain path keeps ``dataset``."""
    spec = os.fspath(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith(HDF5_SUFFIXES) and not os.path.exists(spec):
        if dataset is not None and dataset != tail:
            raise ValueError(f"{spec} names dataset {tail!r} but dataset {dataset!r} was also given; give one")
        return head, tail
    return spec, dataset


def read_measurement(spec, dataset: Optional[str] = None) -> np.ndarray:
    """The measurement array of ``spec``: ``.npy``, ``file.h5:/dataset`` (default dataset ``y``), or an image file."""
    path, dataset = split_dataset(spec, dataset)
    if not os.path.isfile(path):  # a FIFO would block np.load forever
        raise ValueError(f"{path} does not exist or is not a file")
    lower = path.lower()
    if lower.endswith(".npy"):
        from recon.io.volume import load_npy

        return load_npy(path)
    if lower.endswith(HDF5_SUFFIXES):
        return _read_h5(path, dataset or "y")
    if dataset is not None:
        raise ValueError(f"a dataset ({dataset!r}) applies to .h5 files only, not to {path}")
    from recon.io.volume import image_format, read_images

    try:
        image_format(path)
    except ValueError:
        raise ValueError(f"{path}: a measurement is a .npy file, an HDF5 dataset (file.h5:/name) or a sinogram "
                         f"stored as an image (DICOM, NIfTI, PNG, TIFF); got {os.path.splitext(path)[1] or 'no suffix'!r}"
                         + ("; save one array of an .npz with np.save" if path.lower().endswith(".npz") else "")) from None

    data = read_images(path).data
    if data.shape[0] != 1:
        raise ValueError(f"{path} holds {data.shape[0]} slices; a measurement is one (give a single slice)")
    return data[0]


def _read_h5(path: str, dataset: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                found = []
                f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
                raise ValueError(f"{path} has no dataset {dataset!r}; its datasets: {sorted(found)[:20]} "
                                 f"(name one as {path}:/NAME)")
            if not isinstance(f[dataset], h5py.Dataset):
                raise ValueError(f"{path}: {dataset!r} is a {type(f[dataset]).__name__}, not a dataset")
            return f[dataset][()]
    except (OSError, KeyError, TypeError) as err:  # not HDF5, damaged
        raise ValueError(f"cannot read {path}: {err}") from None


def read_vector(path, what: str) -> np.ndarray:
    """A 1-D or 2-D float array from ``.npy``, an HDF5 dataset (``file.h5:/name``; default: the dataset named
    ``what``, as fastMRI and ``recon simulate`` store ``mask``) or a text file (a row a line, values
    separated by spaces or commas)."""
    path, dataset = split_dataset(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path} does not exist or is not a file")
    if path.lower().endswith(HDF5_SUFFIXES):
        values = _read_h5(path, dataset or what)
    elif dataset is not None:
        raise ValueError(f"a dataset ({dataset!r}) applies to .h5 files only, not to the {what} file {path}")
    elif path.lower().endswith(".npy"):
        from recon.io.volume import load_npy

        try:
            values = load_npy(path)
        except ValueError as err:
            raise ValueError(f"the {what} file: {err}") from None
    else:
        try:
            with open(path) as handle:
                rows = [line.replace(",", " ").split() for line in handle if line.strip()]
            if len({len(row) for row in rows}) > 1:
                raise ValueError("its lines hold different numbers of values")
            values = np.array(rows, dtype=np.float64)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read the {what} file {path}: {err}") from None
    try:
        values = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as err:  # text or structured dtypes
        raise ValueError(f"the {what} file {path} does not hold numbers: {err}") from None
    if values.ndim == 2 and 1 in values.shape:  # one value a line, or all on one line
        values = values.reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"the {what} file {path} must hold finite numbers, got {values.size} value(s)")
    return values


def prepare(y, operator: str, **settings):
    """``(y, physics)``: the measurement shaped for the operator the settings describe (see :func:`prepare_geometry`)."""
    y, _, physics = prepare_geometry(y, operator, **settings)
    return y, physics


def prepare_geometry(y, operator: str, *, size=None, n_angles=None, angles=None, degrees: bool = False,
                     n_detectors=None, detector_spacing=None, pixel_size=None, source_distance=None,
                     detector_distance=None, acceleration=None, center_fraction=None, mask_pattern=None, mask_seed=None,
                     mask=None, factor=None):
    """``(y, description, physics)``: the measurement shaped for the operator the settings describe, the
    operator's :mod:`recon.geometry` description and the operator it builds.

    ``angles`` and ``mask`` are arrays or file paths (``.npy`` or text). A setting that does not apply
    to ``operator`` (``--acceleration`` for CT, ``--source-distance`` for parallel beam) is an error.
    """
    kind = operator_kind(operator)
    given = {k: v for k, v in locals().items() if k in _APPLIES and v is not None and v is not False}
    wrong = [k for k in given if kind not in _APPLIES[k]]
    if wrong:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} do(es) not apply to the "
                         f"{operator!r} operator ({kind})")
    if degrees and angles is None:
        raise ValueError("--degrees says what unit the --angles-file is in; without one the angles are even over "
                         "the scan's range: leave --degrees out, or give the angles file")
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"the measurement must hold numbers, got dtype {y.dtype}")
    if kind == "cartesian_mri":
        return _mri(y, acceleration, center_fraction, mask_pattern, mask_seed, mask)
    if np.iscomplexobj(y):
        raise ValueError(f"the measurement is complex ({y.dtype}) but the {kind} operator measures real values")
    from recon.io.volume import _refuse_colour_channels

    _refuse_colour_channels(y, "the measurement")  # (h, w, 3) read as h channels of w x 3 pixels
    y = _with_channels(y.astype(np.float32), "the measurement")
    if kind == "super_resolution":
        factor = 4 if factor is None else check_positive_int("--factor", factor)
        description = geometry.SuperResolution((y.shape[-2] * factor, y.shape[-1] * factor), factor=factor,
                                               channels=y.shape[0])
    else:
        description = _ct(y, kind, size, n_angles, angles, degrees, n_detectors, detector_spacing, pixel_size,
                          source_distance, detector_distance)
    physics = description.build()
    if kind != "super_resolution":
        _check_detector_covers(physics, y.shape[-2:])
    return y, description, physics


def _check_detector_covers(physics, sinogram_shape) -> None:
    """Warn when the detector, at the centre of rotation, is narrower than the image: most often a sinogram
    stored as (detectors, angles), as ``skimage.transform.radon`` returns it, read as (angles, detectors)."""
    width = physics.n_detectors * physics.detector_spacing / getattr(physics, "magnification", 1.0) / physics.pixel_size
    side = min(physics.img_shape[-2:])
    if width < 0.95 * side:
        rows, bins = sinogram_shape
        logger.warning("the detector's %d bins cover %.0f of the image's %d pixels at the centre of rotation: the "
                       "image's edges are outside every view. If the sinogram is (detectors, angles), as "
                       "skimage.transform.radon returns it, transpose it to (angles, detectors) = (%d, %d)",
                       bins, width, side, bins, rows)


def _with_channels(y: np.ndarray, what: str) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(1, C, H, W)`` -> ``(C, H, W)``."""
    if y.ndim == 4 and y.shape[0] == 1:
        y = y[0]
    if y.ndim == 2:
        y = y[None]
    if y.ndim != 3:
        raise ValueError(f"{what} should be (H, W), (C, H, W) or (1, C, H, W), got shape {y.shape}")
    return y


def _ct(y, kind, size, n_angles, angles, degrees, n_detectors, detector_spacing, pixel_size, source_distance,
        detector_distance):
    rows, bins = y.shape[-2:]
    if size is None:
        raise ValueError("CT needs the image size in pixels (--size)")
    if n_angles is not None and n_angles != rows:
        raise ValueError(f"the sinogram has {rows} angles (rows) but --n-angles is {n_angles}")
    if n_detectors is not None and n_detectors != bins:
        raise ValueError(f"the sinogram has {bins} detector bins (columns) but --n-detectors is {n_detectors}")
    if angles is not None:
        angles = np.asarray(read_vector(angles, "angles") if isinstance(angles, (str, os.PathLike)) else angles,
                            dtype=np.float64).reshape(-1)
        if degrees:
            if angles.size > 3 and np.ptp(angles) <= 2 * np.pi + 1e-6:
                raise ValueError(f"with --degrees the {angles.size} angles span only {np.ptp(angles):.3g} degrees: "
                                 "are they in radians? leave --degrees out")
            angles = np.deg2rad(angles)
        elif np.abs(angles).max() > 2 * np.pi + 1e-6:
            raise ValueError(f"angles go up to {np.abs(angles).max():g}, more than 2 pi radians: "
                             "are they in degrees? pass --degrees")
        if angles.size != rows:
            raise ValueError(f"{angles.size} angles given but the sinogram has {rows} rows (angles)")
    common = {"n_detectors": bins, "channels": y.shape[0], "pixel_size": pixel_size,
              "angles": None if angles is None else tuple(float(a) for a in angles),
              "n_angles": rows if angles is None else None}
    if kind == "parallel_beam_ct":
        return geometry.ParallelBeamCT(size, detector_spacing=detector_spacing, **common)
    missing = [name for name, value in (("source_distance", source_distance), ("detector_distance", detector_distance))
               if value is None]
    if missing:
        raise ValueError(f"fan-beam CT needs the scanner's {' and '.join(missing)} in pixels "
                         f"({', '.join('--' + m.replace('_', '-') for m in missing)})")
    return geometry.FanBeamCT(size, source_distance=source_distance, detector_distance=detector_distance,
                              detector_spacing=detector_spacing, **common)


def _mri(y, acceleration, center_fraction, pattern, seed, mask):
    if np.iscomplexobj(y):
        kspace = y[0] if y.ndim == 3 and y.shape[0] == 1 else y
        if kspace.ndim != 2:
            raise ValueError(f"complex k-space should be (H, W) (one single-coil slice), got shape {y.shape}; a volume "
                             "of slices (fastMRI's singlecoil files) and multi-coil data (whose coil maps it estimates) "
                             "go through `recon batch` (native or fastMRI layout)")
        y = np.stack([kspace.real, kspace.imag]).astype(np.float32)
    else:
        y = y[0] if y.ndim == 4 and y.shape[0] == 1 else y
        if y.ndim != 3 or y.shape[0] != 2:
            raise ValueError(f"real MRI k-space should be (2, H, W) (real and imaginary parts, deepinv's convention); "
                             f"got shape {y.shape}; or give complex k-space (H, W)")
        y = y.astype(np.float32)
    height, width = y.shape[-2:]
    _warn_if_uncentred(y)
    measured = np.abs(y).reshape(2 * height, width).max(axis=0) > 0
    if mask is not None and (acceleration is not None or center_fraction is not None or pattern is not None
                             or seed is not None):
        raise ValueError("--mask gives the sampling mask; --acceleration, --center-fraction, --mask-pattern and "
                         "--mask-seed generate one instead: give one or the other")
    if mask is not None:
        mask = np.asarray(read_vector(mask, "mask") if isinstance(mask, (str, os.PathLike)) else mask, dtype=np.float32)
        if mask.shape not in ((height, width), (width,)):
            raise ValueError(f"the mask has shape {mask.shape}; the k-space is {(height, width)}: expected "
                             f"{(height, width)} or ({width},)")
        description = geometry.CartesianMRI((height, width), mask=mask)
    elif acceleration is not None:
        description = geometry.CartesianMRI((height, width), acceleration=acceleration,
                                            center_fraction=0.08 if center_fraction is None else center_fraction,
                                            pattern=pattern or "random", mask_seed=0 if seed is None else seed)
    else:
        if center_fraction is not None or pattern is not None or seed is not None:
            raise ValueError("--center-fraction, --mask-pattern and --mask-seed need --acceleration")
        if measured.all():
            rows = np.abs(y).max(axis=(0, 2)) > 0
            along_rows = "" if rows.all() else (
                f"; only {int(rows.sum())} of its {height} rows hold data: if it is undersampled along the rows, "
                "transpose it so the phase encoding runs along the columns, or give --mask (H, W)")
            raise ValueError("every k-space column holds data and no mask was given, so it reads as fully sampled: "
                             "pass --acceleration (to undersample it retrospectively) or --mask" + along_rows)
        logger.info("mask: the %d of %d k-space columns that hold data", int(measured.sum()), width)
        description = geometry.CartesianMRI((height, width), mask=measured.astype(np.float32))
    physics = description.build()
    sampled = physics.mask.cpu().numpy() > 0  # (H, W); CartesianMRI refuses a mask that measures nothing
    _check_mask_fits(sampled, np.abs(y).max(axis=0) > 0)
    if ((np.abs(y).max(axis=0) > 0) & ~sampled).any():
        logger.warning("k-space outside the mask holds data: undersampling it retrospectively (zeroed there)")
        y = y * sampled.astype(np.float32)
    return y, description, physics


def _check_mask_fits(sampled: np.ndarray, has_data: np.ndarray) -> None:
    """Refuse a mask that samples k-space columns the data leave empty between their first and last columns
    that hold data: those would be taken as measured zeros, which data consistency then imposes. It means
    the data were undersampled already and the mask is not theirs: one in FFT order, another scan's, or a
    generated one (``--acceleration``). Empty columns at the edges are the zero padding fully sampled data
    (fastMRI's) carry, which a retrospective mask may sample. Whole columns are compared, since single
    k-space samples of a synthetic image can be exactly zero."""
    data_columns = has_data.any(axis=0)
    if not data_columns.any():
        return
    first, last = np.flatnonzero(data_columns)[[0, -1]]
    inside = np.zeros_like(data_columns)
    inside[first : last + 1] = True
    empty = np.flatnonzero(sampled.any(axis=0) & ~data_columns & inside)
    if empty.size:
        outside = int((data_columns & ~sampled.any(axis=0)).sum())
        raise ValueError(f"the mask samples {empty.size} k-space column(s) that hold no data (e.g. {empty[:5].tolist()})"
                         f"{f' and leaves out {outside} that do' if outside else ''}: the data are undersampled "
                         "already and the mask is not theirs (stored in FFT order? np.fft.fftshift it; another "
                         "scan's?). Give the acquisition's mask, or leave --mask and --acceleration out to take "
                         "the columns that hold data")


def _warn_if_uncentred(y: np.ndarray) -> None:
    """Warn when the k-space's largest value sits in a corner: a plain ``fft2`` (zero frequency at index 0),
    not the centred convention the operator uses (fastMRI's), which reconstructs as noise."""
    height, width = y.shape[-2:]
    row, column = np.unravel_index(np.argmax(y[0] ** 2 + y[1] ** 2), (height, width))
    near_edge = lambda index, size: min(index, size - 1 - index) < 0.1 * size  # noqa: E731
    if near_edge(row, height) and near_edge(column, width):
        logger.warning("the k-space's largest value is at (%s, %s), a corner: is it a plain fft2 (zero frequency "
                       "first)? The operator takes centred k-space (fastMRI's convention): np.fft.fftshift it",
                       int(row), int(column))

