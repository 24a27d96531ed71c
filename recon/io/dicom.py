"""DICOM in and out: a series as a :class:`~recon.io.slices.Volume`, and slices as a derived series.

Reading (:func:`read_dicom`) takes one file or a folder (searched recursively) holding one series:

- files that are not DICOM, and DICOM files without pixel data (a ``DICOMDIR``), are skipped;
  a DICOM file that cannot be decoded is an error naming it;
- slices are sorted along the slice normal by ``ImagePositionPatient`` (with
  ``ImageOrientationPatient``), else by ``InstanceNumber``; two slices at one position, and images of
  different orientations (a scout saved in the series), are refused;
- values are ``stored * RescaleSlope + RescaleIntercept`` per slice (per frame of an enhanced multi-frame
  image, from its functional groups): Hounsfield units for CT; a rescale tag that is not one number is refused;
  an image with a Modality LUT Sequence (some X-ray images) is read through that LUT instead;
  float pixel data (Float or Double Float Pixel Data, as in parametric maps) is read as stored;
- padding (PixelPaddingValue, through PixelPaddingRangeLimit when given, in stored units: the outside of a
  CT's field of view; for float pixel data the (Double) Float Pixel Padding Value and its range limit) reads as the lowest value of the series' other pixels, not as -2000 or -32768; an
  image that is all padding reads as that value throughout, with a warning; a series all padding is refused;
  padding is greyscale only (the standard pads MONOCHROME1 and MONOCHROME2 images): on a colour or palette
  image a padding tag is ignored, even a malformed one, and every pixel is read;
- MONOCHROME1 images (smallest value white) are turned over within the range their stored values can hold,
  so larger is brighter as everywhere else; not a CT rescaled to Hounsfield units, whose values are HU
  whatever their display (the photometric interpretation says how to show values, the rescale what they are);
- colour (RGB, YBR) and palette images become grey in [0, 1] as colour pictures do (no rescale); a series
  mixing colour and greyscale images, or of a colour model pydicom cannot give as RGB, is refused;
- the geometry becomes NIfTI's RAS+ affine (DICOM's LPS with x and y negated).

Writing (:func:`write_dicom_series`) makes a new series of derived images: CT or MR Image Storage
when the geometry and modality of a reference series are known (same patient, study and frame of
reference, so a viewer overlays it on the original), Secondary Capture otherwise. Values are stored
as 16-bit integers with one RescaleSlope / RescaleIntercept for the series, so a reader gets them
back within half a slope.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
from typing import Optional

import numpy as np

from recon.io.slices import Volume, places_voxels

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_STORAGE = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: the pixel data elements of an image: stored integers, or 32- and 64-bit floats (parametric maps)
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: what a derived series copies from its reference: the patient and study, and the slices' thickness (which
#: may differ from their spacing)
_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
             "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
             "FrameOfReferenceUID", "SliceThickness")


def read_dicom(path) -> Volume:
    """A DICOM file or a folder holding one series, as slices in patient order (see the module docstring)."""
    import pydicom

    path = os.fspath(path)
    files = _files_under(path) if os.path.isdir(path) else [path]
    datasets = []
    for name in files:
        try:
            ds = pydicom.dcmread(name)
        except pydicom.errors.InvalidDicomError:
            if not os.path.isdir(path):
                raise ValueError(f"{name} is not a DICOM file (no DICM marker); expected a DICOM file or folder") from None
            logger.debug("skipping %s: not DICOM", name)
            continue
        except Exception as err:  # noqa: BLE001 - truncated or damaged files raise many types
            raise ValueError(f"cannot read DICOM file {name}: {type(err).__name__}: {err}") from None
        if not any(tag in ds for tag in _PIXEL_TAGS):
            logger.debug("skipping %s: no pixel data", name)
            continue
        datasets.append((name, ds))
    if not datasets:
        raise ValueError(f"{path} holds no DICOM images (files with pixel data)")
    _check_one_series(path, datasets)
    _check_pixel_kinds(path, datasets)
    datasets = _sorted(path, datasets)
    slices = _fill_padding(path, datasets, [_pixels(name, ds) for name, ds in datasets])
    shapes = {s.shape[-2:] for s in slices}
    if len(shapes) > 1:
        raise ValueError(f"{path}: the series' images have different sizes {sorted(shapes)}")
    data = np.concatenate([s.reshape(-1, *s.shape[-2:]) for s in slices]).astype(np.float32)
    first = datasets[0][1]
    modality = str(first.get("Modality", "")) or None
    units = "HU" if _kind(first) == "grey" and _in_hounsfield_units(first) else None
    identity = {key: str(first.get(key)) for key in _IDENTITY if first.get(key) not in (None, "")}
    thickness = _numbers(first, "SliceThickness", 1)
    if thickness is None or not thickness[0] > 0:  # a malformed one is not carried into a derived series
        identity.pop("SliceThickness", None)
    else:
        identity["SliceThickness"] = f"{float(thickness[0]):.8g}"
    affine = _affine([ds for _, ds in datasets], data.shape[0])
    return Volume(data, affine=affine, units=units, modality=modality, space="scanner" if affine is not None else None,
                  sources=[name for name, _ in datasets], dicom=identity)


def _files_under(folder: str) -> list:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return [f for f in found if os.path.isfile(f)]


def _check_one_series(path: str, datasets: list) -> None:
    series = {}
    for name, ds in datasets:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((name, ds))
    if len(series) > 1:
        listing = "; ".join(f"{uid or '(no UID)'}: {len(items)} image(s) like {items[0][0]}"
                            f" ({items[0][1].get('SeriesDescription', '')})" for uid, items in series.items())
        raise ValueError(f"{path} holds {len(series)} DICOM series ({listing}); give the folder or files of one")


def _sorted(path: str, datasets: list) -> list:
    """Slices along the normal of their orientation by position, else by InstanceNumber, else by file name."""
    geometry = [_position_and_normal(ds) for _, ds in datasets]
    numbers = [_instance_number(ds) for _, ds in datasets]
    if all(g is not None for g in geometry):
        _check_one_orientation(path, datasets)
        normal = geometry[0][1]
        keyed = [(float(np.dot(normal, position)), name, ds) for (position, _), (name, ds) in zip(geometry, datasets)]
    elif all(n is not None for n in numbers):
        keyed = [(number, name, ds) for number, (name, ds) in zip(numbers, datasets)]
    else:
        return datasets
    keyed.sort(key=lambda item: item[0])
    for (a, name_a, _), (b, name_b, _) in zip(keyed, keyed[1:]):
        if abs(a - b) < 1e-4:
            raise ValueError(f"{path}: {name_a} and {name_b} are at the same slice position ({a:g}); "
                             "a series with repeated positions (several echoes or phases?) cannot be stacked")
    return [(name, ds) for _, name, ds in keyed]


def _check_one_orientation(path: str, datasets: list) -> None:
    """Slices of one stack share ImageOrientationPatient; a scout or localizer saved under the series' UID
    does not, and sorting it along another image's normal would stack it among the axial slices."""
    groups = []
    for name, ds in datasets:
        orientation = _numbers(ds, "ImageOrientationPatient", 6)
        for group in groups:
            if np.allclose(group[0], orientation, atol=1e-3):
                group[1].append(name)
                break
        else:
            groups.append((orientation, [name]))
    if len(groups) > 1:
        groups.sort(key=lambda group: -len(group[1]))
        listing = "; ".join(f"{len(names)} image(s) like {names[0]} at {np.round(orientation, 4).tolist()}"
                            for orientation, names in groups)
        raise ValueError(f"{path}: the images have {len(groups)} orientations ({listing}); a series is read as one "
                         "stack of parallel slices: remove the others (a scout or localizer?) or give the files of one")


def _numbers(ds, key: str, count: int) -> Optional[np.ndarray]:
    """``count`` finite numbers of tag ``key``; None when it is absent, empty or malformed.

    Type 2 tags may be present with no value, and exports from some systems leave geometry tags
    empty or short: such a tag says nothing, so the series is read as if it were absent."""
    value = ds.get(key)
    if value is None or value == "":
        return None
    try:
        values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
        numbers = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _position_and_normal(ds) -> Optional[tuple]:
    """(ImagePositionPatient, the unit slice normal of ImageOrientationPatient), or None when either is unusable."""
    position, orientation = _numbers(ds, "ImagePositionPatient", 3), _numbers(ds, "ImageOrientationPatient", 6)
    if position is None or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return None if length < 1e-6 else (position, normal / length)


def _instance_number(ds) -> Optional[int]:
    number = _numbers(ds, "InstanceNumber", 1)
    return None if number is None else int(number[0])


#: PhotometricInterpretation of three samples per pixel that pydicom decodes (to RGB where not RGB already)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")


def _kind(ds) -> str:
    """How an image's pixels become values: ``"colour"`` (three samples or a palette: grey in [0, 1]),
    ``"inverted"`` (MONOCHROME1: rescaled, then turned over) or ``"grey"`` (rescaled; MONOCHROME1 too
    where the rescale gives Hounsfield units)."""
    photometric = _photometric(ds)
    if _samples(ds) != 1 or photometric == "PALETTE COLOR":
        return "colour"
    return "inverted" if photometric == "MONOCHROME1" and not _in_hounsfield_units(ds) else "grey"


def _in_hounsfield_units(ds) -> bool:
    """Whether a CT image's rescale gives Hounsfield units (RescaleType HU, or none given, as the
    standard's default for CT). Those values are HU in MONOCHROME1 too: turned over, air would be
    denser than bone."""
    rescale = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _frame_transform(ds, 0)
    return str(ds.get("Modality", "")) == "CT" and rescale is not None \
        and str(rescale.get("RescaleType", "HU")) == "HU"


def _photometric(ds, default: str = "") -> str:
    """PhotometricInterpretation as one spelling (some writers pad it or use lower case)."""
    return str(ds.get("PhotometricInterpretation", default)).strip().upper()


def _samples(ds) -> int:
    value = _numbers(ds, "SamplesPerPixel", 1)
    return 1 if value is None else int(value[0])


def _bits_stored(ds) -> int:
    """Bits of each stored sample: BitsStored, else all of BitsAllocated (16 where neither is given)."""
    return int(ds.get("BitsStored", 0) or 0) or int(ds.get("BitsAllocated", 16) or 16)


def _check_pixel_kinds(path: str, datasets: list) -> None:
    """Refuse, before any pixel is decoded, images this reader cannot turn into values, and a series mixing
    colour, MONOCHROME1 and MONOCHROME2 images: their values are on different scales (grey in [0, 1],
    turned-over and rescaled stored values), so stacked they would not be one volume."""
    kinds = {}
    for name, ds in datasets:
        photometric = _photometric(ds)
        samples, bits = _samples(ds), int(ds.get("BitsAllocated", 0) or 0)
        if samples not in (1, 3):
            raise ValueError(f"{name}: DICOM images of {samples} samples per pixel ({photometric or 'no '}"
                             "PhotometricInterpretation) are not supported; expected greyscale, palette or RGB/YBR")
        if samples == 3 and photometric not in _COLOUR:
            raise ValueError(f"{name}: colour DICOM images in {photometric or 'no'} PhotometricInterpretation are "
                             f"not supported; expected one of {', '.join(_COLOUR)}")
        if samples == 3 and photometric in ("YBR_FULL", "YBR_FULL_422") and bits != 8:
            raise ValueError(f"{name}: {photometric} with {bits} bits per sample cannot be converted to RGB "
                             "(pydicom converts 8-bit YBR only); save the image as RGB")
        if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in ds:
            raise ValueError(f"{name}: a PALETTE COLOR image without its palette (no Red Palette Color Lookup "
                             "Table Descriptor); its pixels are indices, not grey values")
        kinds.setdefault(_kind(ds), []).append(name)
    if len(kinds) > 1:
        words = {"colour": "colour or palette", "inverted": "MONOCHROME1", "grey": "MONOCHROME2"}
        listing = "; ".join(f"{len(names)} {words[kind]} image(s) like {names[0]}" for kind, names in
                            sorted(kinds.items(), key=lambda item: -len(item[1])))
        raise ValueError(f"{path}: the series mixes kinds of image ({listing}); colour becomes grey in [0, 1] and "
                         "MONOCHROME1 is turned over, so their values are on different scales and cannot be stacked: "
                         "give the files of one kind")


def _transfer_syntax(ds):
    """The file's Transfer Syntax UID; one its file meta leaves out (some writers do) is the encoding pydicom
    read the data set in, which for uncompressed pixels is all the decoder needs."""
    from pydicom import uid

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax:
        return syntax
    implicit, little = ds.original_encoding
    if implicit is None:
        raise ValueError("no Transfer Syntax UID and no encoding it was read in")
    return uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def _decode(name: str, ds) -> tuple:
    """The decoded pixels and the PhotometricInterpretation they are in: pydicom 3 gives YBR_FULL and
    YBR_FULL_422 (and JPEG's YBR) as RGB, but leaves the dataset's tag as it was, so its own account is used."""
    from pydicom.pixels import as_pixel_options, get_decoder

    try:
        syntax = _transfer_syntax(ds)
        array, changes = get_decoder(syntax).as_array(ds, **as_pixel_options(ds, as_rgb=True))
    except Exception as err:  # noqa: BLE001 - truncated pixel data, a codec that is not installed, ...
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise ValueError(f"cannot decode the pixel data of {name} (transfer syntax {syntax}): "
                         f"{type(err).__name__}: {err}") from None
    photometric = changes.get("photometric_interpretation") or _photometric(ds, "MONOCHROME2")
    return np.asarray(array), str(photometric).strip().upper()


def _pixels(name: str, ds) -> tuple:
    """An image's values (:func:`_values`) and where its stored values are padding (:func:`_padding`)."""
    array, photometric = _decode(name, ds)
    return _values(name, ds, array, photometric), _padding(name, ds, array)


def _values(name: str, ds, array: np.ndarray, photometric: str) -> np.ndarray:
    """An image's values, ``(H, W)`` or ``(frames, H, W)``; see :func:`_colour_grey` for colour and palette.

    Greyscale values are ``stored * RescaleSlope + RescaleIntercept``. MONOCHROME1 (the smallest value
    displays white, as in many radiographs) is turned over so that larger values are brighter, as in
    every other image: ``v -> lo + hi - v``, with ``[lo, hi]`` the range the stored values can hold
    (BitsStored, PixelRepresentation) after the rescale. That range is the same for every slice of a
    series, so one tissue gets one value throughout; each slice's own minimum and maximum would not.
    Turning stored values over their range and then rescaling is the same map, which is what this does.
    """
    kind = _kind(ds)
    if kind == "colour":
        return _colour_grey(name, ds, array, photometric)
    if ds.get("ModalityLUTSequence"):
        return _modality_lut(name, ds, array, inverted=kind == "inverted")
    stored = array.astype(np.float64)
    if kind == "inverted" and array.dtype.kind == "f":
        raise ValueError(f"{name}: MONOCHROME1 float pixel data has no stored range to turn it over in; "
                         "save it as MONOCHROME2")
    if kind == "inverted":
        bits = _bits_stored(ds)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.get("PixelRepresentation", 0) or 0) \
            else (0, 2 ** bits - 1)
        stored = (low + high) - stored
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds and _frame_transform(ds, 0) is not None:
        frames = stored.reshape(-1, *stored.shape[-2:])
        values = []
        for k, frame in enumerate(frames):
            transform = _frame_transform(ds, k)
            if transform is None:  # rescaled frames beside stored ones would not be one volume
                raise ValueError(f"{name}: frame {k + 1} has no PixelValueTransformationSequence, frame 1 has one")
            values.append(frame * _rescale(name, transform, "RescaleSlope", 1.0)
                          + _rescale(name, transform, "RescaleIntercept", 0.0))
        return np.stack(values)
    return stored * _rescale(name, ds, "RescaleSlope", 1.0) + _rescale(name, ds, "RescaleIntercept", 0.0)


def _padding(name: str, ds, array: np.ndarray) -> Optional[np.ndarray]:
    """Where a greyscale image's stored values are padding, None where none is (or the image has no padding tag).

    The stored values only, before any rescale or LUT, as the standard gives them (:func:`_padding_range`).
    None for a colour or palette image, whatever its padding tags hold: Pixel Padding Value pads images of
    Photometric Interpretation MONOCHROME1 or MONOCHROME2 (DICOM PS3.3 C.7.5.1.1.2), and matched against
    RGB samples or palette indices it would mark colours, not the outside of the image."""
    if _kind(ds) == "colour":
        return None
    padding = _padding_range(name, ds)
    if padding is None:
        return None
    mask = (array >= padding[0]) & (array <= padding[1])
    return mask if mask.any() else None


#: (value, range limit) tags of padding, for integer pixel data and for each kind of float pixel data
_PADDING_TAGS = {"PixelData": ("PixelPaddingValue", "PixelPaddingRangeLimit"),
                 "FloatPixelData": ("FloatPixelPaddingValue", "FloatPixelPaddingRangeLimit"),
                 "DoubleFloatPixelData": ("DoubleFloatPixelPaddingValue", "DoubleFloatPixelPaddingRangeLimit")}


def _padding_range(name: str, ds) -> Optional[tuple]:
    """``(low, high)``, the stored values that are padding; None without a padding value.

    Integer pixel data: PixelPaddingValue, or with PixelPaddingRangeLimit every stored value from the
    smaller of the two to the larger; float pixel data (parametric maps): the (Double) Float Pixel
    Padding Value and its range limit, in the same way."""
    element = next((key for key in ("FloatPixelData", "DoubleFloatPixelData") if key in ds), "PixelData")
    value_key, limit_key = _PADDING_TAGS[element]
    read = _stored_number if element == "PixelData" else _rescale  # a float's value as it is
    value = read(name, ds, value_key)
    if value is None:
        return None
    limit = read(name, ds, limit_key)
    return (value, value) if limit is None else (min(value, limit), max(value, limit))


def _stored_number(name: str, ds, key: str) -> Optional[int]:
    """A padding tag as a stored pixel value; None when absent or empty. Malformed, it is refused like a rescale
    tag: read as absent it would leave -2000 or -32768 among the values. The tag is US or SS as the pixels are
    unsigned or signed, but some writers give a signed image's value as US (32768 for -32768): the 16 bits
    are then read as the signed number they hold, as the pixels are."""
    number = _rescale(name, ds, key)  # refused unless one finite number
    if number is None:
        return None
    if number != round(number):
        raise ValueError(f"{name}: {key} is {number!r}; expected one whole number (a stored pixel value)")
    number = int(number)
    if int(ds.get("PixelRepresentation", 0) or 0) and number >= 2 ** 15:
        number -= 2 ** 16
    return number


def _fill_padding(path: str, datasets: list, read: list) -> list:
    """The images' values (``read``: values and padding of each of ``datasets``) with their padding as the
    lowest value of the series' other pixels.

    Padding is no measurement: outside a CT's field of view -2000 or -32768 read as Hounsfield units would
    stretch the intensity range and put matter far below air into the simulation. The darkest real value
    (air, in a CT) stands in for it: no value outside the data. An image (or frame) that is all padding (a
    blank slice at a series' edge) becomes that value throughout, with a warning naming it; a series with
    no pixel that is not padding holds no image and is refused."""
    if all(mask is None for _, mask in read):
        return [values for values, _ in read]
    blank = []
    for (name, ds), (_, mask) in zip(datasets, read):
        frames = [] if mask is None else mask.reshape(-1, *mask.shape[-2:])
        blank += [name if len(frames) == 1 else f"{name} (frame {k + 1})" for k, frame in enumerate(frames) if frame.all()]
    real = [values[~mask] if mask is not None else values.ravel() for values, mask in read]
    if not any(r.size for r in real):
        low, high = _padding_range(*datasets[0])
        stored = f"{low}" if low == high else f"{low} to {high}"
        raise ValueError(f"{path}: every pixel of every image is padding (stored value {stored}, PixelPaddingValue): "
                         "the series holds no image")
    lowest = min(float(r.min()) for r in real if r.size)
    if blank:
        logger.warning("%s: %d images are all padding (PixelPaddingValue) and read as %g throughout: %s", path,
                       len(blank), lowest, ", ".join(blank[:5]) + (", ..." if len(blank) > 5 else ""))
    count, padded = sum(int(mask.sum()) for _, mask in read if mask is not None), sum(m is not None for _, m in read)
    logger.info("%s: %d pixels in %d of %d images are padding (PixelPaddingValue), read as %g, the lowest value "
                "of the other pixels", path, count, padded, len(read), lowest)
    return [values if mask is None else np.where(mask, lowest, values) for values, mask in read]


def _modality_lut(name: str, ds, array: np.ndarray, inverted: bool) -> np.ndarray:
    """Values through a Modality LUT Sequence (X-ray images may have one in place of a rescale; it may be
    non-linear, so stored values are not the modality's values). MONOCHROME1 is turned over within the range
    the LUT's entries can hold (its descriptor's bits), again the same for every slice."""
    from pydicom.pixels import apply_modality_lut

    try:
        values = apply_modality_lut(array, ds).astype(np.float64)
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
    except Exception as err:  # noqa: BLE001 - a malformed LUT raises several types
        raise ValueError(f"{name}: cannot apply its Modality LUT Sequence: {type(err).__name__}: {err}") from None
    return (2 ** bits - 1) - values if inverted else values


def _colour_grey(name: str, ds, array: np.ndarray, photometric: str) -> np.ndarray:
    """A colour (RGB, YBR) or palette image as grey in [0, 1], the way a colour or palette PNG or TIFF is read
    (:func:`recon.io.volume._load_picture`), so one picture gives one image whichever format it came in.

    Such images are secondary captures, photographs, ultrasound or screenshots: their samples are colours,
    not Hounsfield units or any other measure, so no rescale applies (the Modality LUT does not apply to
    colour in DICOM). Samples are scaled to [0, 1] by their bit depth (``2 ** BitsStored - 1``; a
    palette's by its entries' bits) before :func:`skimage.color.rgb2gray`, as skimage scales a picture's
    8- or 16-bit samples: in stored units an 8-bit and a 12-bit copy of one photograph would differ 16-fold.
    A palette image is read through its palette (its pixels are indices, not grey values); alpha, if the
    palette has it, is composited on white as for an RGBA picture.
    """
    from pydicom.pixels import apply_color_lut, convert_color_space
    from skimage.color import rgb2gray, rgba2rgb

    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(array, ds)
        except Exception as err:  # noqa: BLE001 - a malformed palette raises several types
            raise ValueError(f"{name}: cannot read its palette (Palette Color Lookup Tables): "
                             f"{type(err).__name__}: {err}") from None
        full = 2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
        if rgb.max() > full:
            raise ValueError(f"{name}: palette entries up to {int(rgb.max())}, more than the "
                             f"{ds.RedPaletteColorLookupTableDescriptor[2]} bits its descriptor gives them")
    else:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):  # not converted by the decoder (8-bit: checked before)
            array = convert_color_space(array, "YBR_FULL", "RGB")
        elif photometric != "RGB":
            raise ValueError(f"{name}: pydicom decoded its colour pixels as {photometric}, not RGB; save it as RGB")
        rgb = array
        full = 2 ** _bits_stored(ds) - 1
    values = rgb.astype(np.float64) / full
    return rgb2gray(rgba2rgb(values) if values.shape[-1] == 4 else values)


def _frame_transform(ds, frame: int):
    """Frame ``frame``'s item of PixelValueTransformationSequence in an enhanced multi-frame image (its own,
    else the shared one), None without one. Enhanced CT keeps its rescale there, not at the top level,
    so without it stored values would pass for Hounsfield units."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index:
            transform = items[index].get("PixelValueTransformationSequence")
            if transform is not None and len(transform) > 0:
                return transform[0]
    return None


def _rescale(name: str, ds, key: str, default: Optional[float] = None) -> Optional[float]:
    """One number of a rescale (or float padding) tag, ``default`` when absent or empty. Unlike a geometry
    tag, a malformed one is refused: read as absent it would shift or scale every value of the slice, or
    leave padding among the values, without a word."""
    value = ds.get(key)
    if value is None or value == "":
        return default
    number = _numbers(ds, key, 1)
    if number is None:
        shown = list(value) if not isinstance(value, (str, bytes, int, float)) else value
        raise ValueError(f"{name}: {key} is {shown!r}; expected one finite number")
    return float(number[0])


def _agrees(numbers: Optional[np.ndarray], reference: np.ndarray) -> bool:
    """Whether a slice's PixelSpacing holds the first slice's numbers (to rounding in the file's text)."""
    return numbers is not None and bool(np.allclose(numbers, reference, rtol=1e-4, atol=1e-6))


def _affine(datasets: list, n_slices: int) -> Optional[np.ndarray]:
    """RAS+ affine of sorted single-frame slices; None when the files do not say where they are, or when the
    slices are not evenly spaced along a line (a missing file, a scan of varying spacing), which one affine
    cannot describe: a derived series would put slices where the source has none."""
    if len(datasets) != n_slices:  # multi-frame: the per-frame geometry is not read
        return None
    geometry = [_position_and_normal(ds) for ds in datasets]
    spacing = _numbers(datasets[0], "PixelSpacing", 2)
    if spacing is None or not (spacing > 0).all() or any(g is None for g in geometry):
        return None  # a spacing <= 0 says nothing either: its affine would be singular (NIfTI cannot hold it)
    first = datasets[0]
    orientation = _numbers(first, "ImageOrientationPatient", 6)
    other = next((ds for ds in datasets[1:] if not _agrees(_numbers(ds, "PixelSpacing", 2), spacing)), None)
    if other is not None:  # the first slice's would be written for every slice of a derived series
        logger.warning("%s has PixelSpacing %s, the first slice %s: one affine cannot describe the series, so its "
                       "geometry is not kept", getattr(other, "filename", None) or "a slice",
                       _numbers(other, "PixelSpacing", 2), np.round(spacing, 6).tolist())
        return None
    row_spacing, column_spacing = spacing
    positions = np.stack([position for position, _ in geometry])
    origin = positions[0]
    if n_slices > 1:
        step = (positions[-1] - origin) / (n_slices - 1)
        expected = origin + np.arange(n_slices)[:, None] * step
        off = np.linalg.norm(positions - expected, axis=1)
        if off.max() > 0.2 * np.linalg.norm(step):
            k = int(np.argmax(off))
            logger.warning("%s is at %s mm, %.3g mm from where even spacing puts it: the slices are not evenly "
                           "spaced (a missing file?), so their geometry is not kept",
                           getattr(datasets[k], "filename", None) or f"slice {k + 1}",
                           np.round(positions[k], 3).tolist(), off[k])
            return None
    else:
        # a malformed tag (several values, text, NaN, <= 0) says nothing, like the geometry tags: 1 mm
        thickness = _numbers(first, "SliceThickness", 1)
        step = geometry[0][1] * (float(thickness[0]) if thickness is not None and thickness[0] > 0 else 1.0)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing  # along a row: the column index grows
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def write_dicom_series(folder, data, reference: Optional[Volume] = None, description: str = "diffrecon",
                       series_number: int = 900, overwrite: bool = False) -> list:
    """Write slices ``data`` ``(N, H, W)`` (or one ``(H, W)`` image) as a new DICOM series in ``folder``.

    Parameters
    ----------
    folder : path
        Created if absent; an existing folder must be empty unless ``overwrite`` (then its ``IM*.dcm``
        files are replaced).
    data : array
        Values in the reference's units (e.g. HU); stored as uint16 with one rescale for the series.
    reference : Volume, optional
        The series (or NIfTI volume) the slices were derived from: geometry, modality, patient and
        study are copied and the new series gets its own UID. Its slices must match ``data``'s.
    description : str
        SeriesDescription.

    Returns the paths written, one file per slice.
    """
    import pydicom

    affine = reference.affine if reference is not None else None
    data = _checked_series_data(data, reference, affine)
    _prepare_folder(os.fspath(folder), overwrite)
    low, high = float(data.min()), float(data.max())
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.round((data - low) / slope).clip(0, 65535).astype(np.uint16)
    template = _series_template(reference, affine, description, series_number, low, high, slope)
    paths = []
    for index, pixels in enumerate(stored):
        path = os.path.join(os.fspath(folder), f"IM{index + 1:06d}.dcm")
        pydicom.dcmwrite(path, _slice_dataset(template, index, pixels, affine), enforce_file_format=True)
        paths.append(path)
    return paths


def _checked_series_data(data, reference: Optional[Volume], affine: Optional[np.ndarray]) -> np.ndarray:
    """``data`` as finite ``(N, H, W)`` float64 that ``reference`` can place; refused before any file is written."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or not np.isfinite(data).all():
        raise ValueError(f"DICOM export needs finite slices (N, H, W), got shape {data.shape}"
                         + ("" if data.ndim != 3 else " with NaN or Inf values"))
    if affine is not None and not places_voxels(affine):
        # as write_nifti refuses it: ImageOrientationPatient and PixelSpacing would be written as NaN or 0
        raise ValueError(f"the reference {reference.sources[:1]} has an affine that cannot place voxels (NaN, or "
                         "voxel axes of zero length or in one plane); give images with valid geometry, or none")
    if reference is not None and reference.data.shape != data.shape:
        raise ValueError(f"the reference {reference.sources[:1]} has slices {reference.data.shape}, "
                         f"the data to write {data.shape}")
    return data


def derived_identity(source: dict, has_geometry: bool) -> dict:
    """The patient and study a derived series is written in: ``source``'s (a reference's ``dicom``), with a
    new study UID, and with geometry a new frame of reference, where it has none (no frame without geometry).
    Applied once to a reference, every series written from it shares them."""
    from pydicom.uid import generate_uid

    identity = dict(source)
    identity.setdefault("StudyInstanceUID", generate_uid())
    if has_geometry:
        identity.setdefault("FrameOfReferenceUID", generate_uid())
    else:
        identity.pop("FrameOfReferenceUID", None)
    return identity


def _series_template(reference: Optional[Volume], affine: Optional[np.ndarray], description: str,
                     series_number: int, low: float, high: float, slope: float):
    """What every slice of the new series shares: the reference's patient and study, a new series UID, the
    modality's required attributes, and one rescale and window for the series."""
    import pydicom
    from pydicom.uid import generate_uid

    modality = reference.modality if reference is not None and affine is not None else None
    sop_class = _STORAGE.get(modality, _SECONDARY_CAPTURE)
    series_uid, now = generate_uid(), datetime.datetime.now()
    identity = derived_identity(reference.dicom if reference is not None else {}, affine is not None)
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, key, identity.get(key, ""))  # type 2: present, possibly empty
    for key, value in identity.items():
        setattr(ds, key, value)
    if not all(str(value).isascii() for value in (*identity.values(), description)):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: undeclared, a name such as Müller is written as '?'
    ds.Modality = modality or "OT"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    if sop_class == _SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
    else:
        ds.AcquisitionNumber = ""
        if modality == "CT":
            ds.KVP = ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "2D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{low:.10g}"
    if modality == "CT" and reference.units == "HU":
        ds.RescaleType = "HU"
    center, width = (low + high) / 2, max(high - low, 1e-6)
    ds.WindowCenter, ds.WindowWidth = f"{center:.6g}", f"{width:.6g}"
    if width < 1:  # LINEAR windows must be at least 1 wide; values in [0, 1] (a std, stored units) are narrower
        ds.VOILUTFunction = "LINEAR_EXACT"
    return ds


def _slice_dataset(template, index: int, pixels: np.ndarray, affine: Optional[np.ndarray]):
    """Slice ``index`` of the series: the template plus its own instance UID, number, position and pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(template)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = template.SOPClassUID
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = index + 1
    if affine is not None:
        _set_geometry(ds, affine, index)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def _prepare_folder(folder: str, overwrite: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} exists and is not a folder; a DICOM series is written as a folder of files")
    if os.path.isdir(folder):
        entries = os.listdir(folder)
        ours = [e for e in entries if e.startswith("IM") and e.endswith(".dcm")]
        if entries and not overwrite:
            raise ValueError(f"{folder} is not empty; choose a new folder or pass overwrite to replace its IM*.dcm files")
        if len(ours) != len(entries):
            raise ValueError(f"{folder} holds files this export did not write; choose a new folder")
        for entry in ours:
            os.remove(os.path.join(folder, entry))
    os.makedirs(folder, exist_ok=True)


def _set_geometry(ds, affine: np.ndarray, index: int) -> None:
    lps = np.linalg.inv(_LPS_TO_RAS) @ affine
    columns, rows, normal = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    column_spacing, row_spacing, slice_spacing = (float(np.linalg.norm(v)) for v in (columns, rows, normal))
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in (*(columns / column_spacing), *(rows / row_spacing))]
    ds.ImagePositionPatient = [f"{v:.8g}" for v in lps[:3, 3] + index * normal]
    ds.PixelSpacing = [f"{row_spacing:.8g}", f"{column_spacing:.8g}"]
    if "SliceThickness" not in ds:  # the reference's own where it gave one: thickness is not spacing
        ds.SliceThickness = f"{slice_spacing:.8g}"
    ds.SpacingBetweenSlices = f"{slice_spacing:.8g}"
