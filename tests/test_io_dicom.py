"""recon.io.dicom: series read in patient order in Hounsfield units; derived series written back.

Every DICOM file here is synthetic, written by the test itself (``conftest.write_dicom_slices``)."""

import os

import numpy as np
import pydicom
import pytest
from conftest import write_dicom_slices

from recon.io import read_dicom, read_images, write_dicom_series


def _hu(n=4, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-1000, 1500, (n, h, w)))


def test_a_shuffled_series_is_read_in_position_order_in_hounsfield_units(tmp_path):
    hu = _hu()
    write_dicom_slices(tmp_path / "series", hu, slope=0.5, intercept=-1024.0, order=[2, 0, 3, 1])
    (tmp_path / "series" / "README.txt").write_text("not DICOM: skipped")
    volume = read_images(tmp_path / "series")
    np.testing.assert_allclose(volume.data, hu, atol=0.25)  # stored * 0.5 - 1024
    assert volume.units == "HU" and volume.modality == "CT"
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    # voxel (i=3, j=5, k=2) -> LPS (-40 + 3*0.7, -30 + 5*0.8, 12 + 2*2.5) -> RAS negates x and y
    np.testing.assert_allclose(volume.affine @ [3, 5, 2, 1], [40 - 2.1, 30 - 4.0, 17.0, 1])
    assert volume.dicom["PatientID"] == "P001"


def test_slices_without_positions_sort_by_instance_number(tmp_path):
    hu = _hu(3)
    paths = write_dicom_slices(tmp_path / "s", hu, order=[1, 2, 0])
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    volume = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(volume.data, hu)
    assert volume.affine is None


@pytest.mark.parametrize("damage, match", [
    ("two-series", "2 DICOM series"),
    ("truncated", "cannot"),
    ("same-position", "same slice position"),
    ("empty", "no DICOM images"),
])
def test_a_folder_that_is_not_one_readable_series_is_refused_by_name(tmp_path, damage, match):
    folder = tmp_path / "s"
    paths = write_dicom_slices(folder, _hu(3))
    if damage == "two-series":
        write_dicom_slices(tmp_path / "s" / "other", _hu(2))
    elif damage == "truncated":
        data = open(paths[1], "rb").read()
        open(paths[1], "wb").write(data[: len(data) - 100])
    elif damage == "same-position":
        ds = pydicom.dcmread(paths[2])
        ds.ImagePositionPatient = pydicom.dcmread(paths[1]).ImagePositionPatient
        ds.save_as(paths[2])
    else:
        for path in paths:
            ds = pydicom.dcmread(path)
            del ds.PixelData
            ds.save_as(path)
    with pytest.raises(ValueError, match=match):
        read_images(folder)


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        if value is _DELETE:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


_DELETE = object()


@pytest.mark.parametrize("files, tags", [
    ([1], {"ImagePositionPatient": None}),  # empty on one file: sorted by InstanceNumber
    ("all", {"PixelSpacing": None}),
    ("all", {"PixelSpacing": [0, 0]}),  # gave a singular affine: NIfTI export crashed, DICOM export wrote NaN
    ("all", {"PixelSpacing": [-0.5, 0.5]}),
    ("all", {"ImageOrientationPatient": [1, 0, 0]}),  # too short
    ("all", {"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}),  # no normal
    ("all", {"ImagePositionPatient": [-40.0, -30.0]}),
    ("all", {"ImagePositionPatient": _DELETE, "InstanceNumber": None}),  # nothing to sort by: file order
])
def test_empty_or_malformed_geometry_tags_are_read_as_absent(tmp_path, files, tags):
    hu = _hu(3)
    paths = write_dicom_slices(tmp_path / "s", hu, order=[0, 1, 2])
    for index in range(3) if files == "all" else files:
        _edit(paths[index], **tags)
    volume = read_images(tmp_path / "s")
    np.testing.assert_allclose(volume.data, hu)
    assert volume.affine is None


@pytest.mark.parametrize("vr, value", [("DS", ["2.5", "3"]), ("LO", "abc"), ("DS", "nan"), ("DS", "-2.5")])
def test_a_malformed_slice_thickness_of_a_single_slice_is_read_as_absent(tmp_path, vr, value):
    """A multi-valued SliceThickness raised a bare TypeError, and NaN gave an affine of NaN that export refused
    only after the work: a single slice's step along its normal is 1 mm then, as without the tag."""
    hu = _hu(1)
    path = write_dicom_slices(tmp_path / "s", hu)[0]
    ds = pydicom.dcmread(path)
    del ds.SliceThickness
    ds.add_new(pydicom.datadict.tag_for_keyword("SliceThickness"), vr, value)
    ds.save_as(path)
    volume = read_images(path)
    np.testing.assert_allclose(volume.data, hu)
    np.testing.assert_allclose(volume.affine[:3, 2], [0.0, 0.0, 1.0])
    assert volume.spacing[0] == 1.0 and "SliceThickness" not in volume.dicom  # not carried into an export


def test_slices_of_another_pixel_spacing_keep_no_geometry_and_say_why(tmp_path, caplog):
    """The first slice's spacing was taken for all: a derived series would say every slice is 0.8 x 0.7 mm."""
    paths = write_dicom_slices(tmp_path / "s", _hu(3))
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [1.0, 1.0]
        ds.save_as(path)
    with caplog.at_level("WARNING", logger="recon.io.dicom"):
        volume = read_images(tmp_path / "s")
    assert volume.affine is None and volume.data.shape == (3, *_hu(3).shape[1:])
    assert "has PixelSpacing" in caplog.text and "one affine cannot describe the series" in caplog.text


def test_unevenly_spaced_slices_keep_no_geometry_and_say_why(tmp_path, caplog):
    hu = _hu(4)
    paths = write_dicom_slices(tmp_path / "s", hu)
    os.remove(paths[2])  # a file missing from the series
    with caplog.at_level("WARNING", logger="recon.io.dicom"):
        volume = read_images(tmp_path / "s")
    np.testing.assert_allclose(volume.data, hu[[0, 1, 3]])
    assert volume.affine is None  # one affine would move the middle slice by 1.25 mm
    assert "not evenly spaced" in caplog.text
    written = write_dicom_series(tmp_path / "out", volume.data, reference=volume)
    assert "ImagePositionPatient" not in pydicom.dcmread(written[1])


@pytest.mark.parametrize("affine", [np.diag([0.0, 1.0, 1.0, 1.0]), np.full((4, 4), np.nan)])
def test_a_reference_affine_that_cannot_place_voxels_is_refused_before_writing(tmp_path, affine):
    """A singular or NaN affine was written as NaN ImageOrientationPatient and a PixelSpacing of 0."""
    from recon.io.slices import Volume

    reference = Volume(np.zeros((2, 8, 6), np.float32), affine=affine, modality="CT", sources=["scan.nii"])
    with pytest.raises(ValueError, match="cannot place voxels"):
        write_dicom_series(tmp_path / "out", np.ones((2, 8, 6)), reference=reference)
    assert not (tmp_path / "out").exists()


def test_a_single_file_that_is_not_dicom_is_refused(tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\0" * 300)
    with pytest.raises(ValueError, match="not a DICOM file"):
        read_images(bad)


def test_a_derived_ct_series_keeps_study_and_geometry_under_a_new_series_uid(tmp_path):
    hu = _hu(3)
    write_dicom_slices(tmp_path / "src", hu)
    source = read_dicom(tmp_path / "src")
    result = source.data + 0.37  # fractional values: kept within half a rescale step
    paths = write_dicom_series(tmp_path / "out", result, reference=source, description="ccdf mean")
    assert len(paths) == 3
    back = read_dicom(tmp_path / "out")
    step = (result.max() - result.min()) / 65535
    np.testing.assert_allclose(back.data, result, atol=step / 2 + 1e-3)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
    first = pydicom.dcmread(paths[0])
    src = pydicom.dcmread(source.sources[0])
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert first.StudyInstanceUID == src.StudyInstanceUID and first.SeriesInstanceUID != src.SeriesInstanceUID
    assert first.FrameOfReferenceUID == src.FrameOfReferenceUID and first.PatientID == "P001"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"] and first.SeriesDescription == "ccdf mean"


def test_without_a_reference_the_series_is_a_secondary_capture_and_the_folder_is_not_overwritten(tmp_path):
    data = np.linspace(0, 1, 2 * 8 * 6).reshape(2, 8, 6)
    paths = write_dicom_series(tmp_path / "out", data)
    assert pydicom.dcmread(paths[0]).SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    np.testing.assert_allclose(read_dicom(tmp_path / "out").data, data, atol=1e-4)
    with pytest.raises(ValueError, match="not empty"):
        write_dicom_series(tmp_path / "out", data)
    (tmp_path / "out" / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="did not write"):
        write_dicom_series(tmp_path / "out", data, overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "a user's file"


def test_a_multi_frame_file_gives_its_frames_as_slices(tmp_path):
    hu = _hu(3)
    path = write_dicom_slices(tmp_path / "s", hu[:1])[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = np.round(hu - ds.RescaleIntercept).astype(np.int16).tobytes()
    ds.save_as(path)
    volume = read_images(path)
    np.testing.assert_allclose(volume.data, hu)
    assert volume.affine is None  # per-frame geometry is not read


def test_an_enhanced_multi_frame_file_is_rescaled_by_its_functional_groups(tmp_path):
    """Enhanced CT keeps RescaleSlope / RescaleIntercept in its functional groups, not at the top level: its
    stored values were read as if they were Hounsfield units' (units None, so simulate rescaled them wrongly)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    hu = _hu(3)
    path = write_dicom_slices(tmp_path / "s", hu[:1])[0]
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.NumberOfFrames = 3
    ds.PixelData = np.round((hu + 1024) / 2).astype(np.int16).tobytes()  # frame 2 below: slope 1, intercept -1000

    def transform(slope, intercept):
        group, values = Dataset(), Dataset()
        values.RescaleSlope, values.RescaleIntercept, values.RescaleType = slope, intercept, "HU"
        group.PixelValueTransformationSequence = Sequence([values])
        return group

    ds.SharedFunctionalGroupsSequence = Sequence([transform(2, -1024)])
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset(), Dataset(), transform(1, -1000)])
    ds.save_as(path)
    volume = read_images(path)
    np.testing.assert_allclose(volume.data[:2], hu[:2], atol=1)
    np.testing.assert_allclose(volume.data[2], np.round((hu[2] + 1024) / 2) - 1000)
    assert volume.units == "HU"


@pytest.mark.parametrize("key, vr, value", [
    ("RescaleSlope", "DS", ["1", "2"]),  # multi-valued
    ("RescaleIntercept", "DS", ["-1024", "0"]),
    ("RescaleIntercept", "LO", "abc"),  # not a number
])
def test_a_malformed_rescale_tag_is_refused_by_file_and_tag(tmp_path, key, vr, value):
    paths = write_dicom_slices(tmp_path / "s", _hu(3))
    ds = pydicom.dcmread(paths[1])
    delattr(ds, key)
    ds.add_new(pydicom.datadict.tag_for_keyword(key), vr, value)
    ds.save_as(paths[1])
    with pytest.raises(ValueError, match=f"file001.dcm: {key} is .*expected one finite number"):
        read_images(tmp_path / "s")


def test_an_empty_rescale_tag_is_read_as_absent(tmp_path):
    hu = _hu(3)
    paths = write_dicom_slices(tmp_path / "s", hu, intercept=0.0)
    for path in paths:
        _edit(path, RescaleSlope=None)
    np.testing.assert_allclose(read_images(tmp_path / "s").data, hu)


def test_a_scout_image_in_the_series_is_refused_not_stacked_among_the_slices(tmp_path):
    paths = write_dicom_slices(tmp_path / "s", _hu(4))
    _edit(paths[0], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # a coronal localizer under the series UID
    with pytest.raises(ValueError, match=r"2 orientations \(3 image\(s\) .*; 1 image\(s\) like .*file003.dcm.*scout"):
        read_images(tmp_path / "s")
    os.remove(paths[0])
    assert read_images(tmp_path / "s").data.shape == (3, 12, 10)


def _colour_series(folder, colours, photometric="RGB", planar=0, bits=8, frames=False):
    """``colours`` (N, H, W, 3) as a colour series on write_dicom_slices' geometry and identity, its rescale
    tags left in place (a screenshot saved under a CT series may have them); ``frames``: one multi-frame file."""
    colours = np.asarray(colours)
    paths = write_dicom_slices(folder, np.zeros(colours.shape[:1 if frames else 3][:1] + colours.shape[1:3]))
    for path, pixels in zip(paths, [colours] if frames else colours):
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, planar
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8 if bits == 8 else 16, bits, bits - 1, 0
        if frames:
            ds.NumberOfFrames = len(colours)
        if planar:  # RRR...GGG...BBB per frame
            pixels = np.moveaxis(pixels, -1, -3)
        ds.PixelData = np.ascontiguousarray(pixels).astype(np.uint8 if bits == 8 else np.uint16).tobytes()
        ds.save_as(path)
    return paths


def _rgb(n=3, h=12, w=10, top=255, seed=1):
    return np.random.default_rng(seed).integers(0, top + 1, (n, h, w, 3))


@pytest.mark.parametrize("planar", [0, 1])
def test_an_rgb_series_is_read_as_grey_like_the_same_colour_picture(tmp_path, planar):
    """Colour DICOM images were refused; they become grey in [0, 1] as a colour PNG does, without the rescale."""
    import skimage.io

    rgb = _rgb()
    _colour_series(tmp_path / "s", rgb, planar=planar)
    volume = read_images(tmp_path / "s")
    for k in range(3):
        skimage.io.imsave(tmp_path / f"slice{k}.png", rgb[k].astype(np.uint8), check_contrast=False)
    pictures = read_images([tmp_path / f"slice{k}.png" for k in range(3)])
    np.testing.assert_allclose(volume.data, pictures.data, atol=1e-6)
    assert volume.data.min() >= 0 and volume.data.max() <= 1 and volume.data.std() > 0.1
    assert volume.units is None and volume.modality == "CT"  # colour is never Hounsfield units
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))  # geometry and slice order as for greyscale


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_a_ybr_image_is_converted_to_rgb_once_before_grey(tmp_path, photometric):
    """pydicom 3 gives uncompressed YBR_FULL (and YBR_FULL_422) as RGB but keeps the tag: converted again,
    or not at all, grey would be far off."""
    from pydicom.pixels import convert_color_space
    from skimage.color import rgb2gray

    rgb = _rgb(1, 8, 10)
    if photometric == "YBR_FULL_422":  # one Cb, Cr per two pixels of a row
        rgb[:, :, 1::2] = rgb[:, :, ::2]
    ybr = convert_color_space(rgb.astype(np.uint8), "RGB", "YBR_FULL")
    path = _colour_series(tmp_path / "s", ybr, photometric="YBR_FULL")[0]
    if photometric == "YBR_FULL_422":  # stored Y1 Y2 Cb Cr per pair of pixels
        ds = pydicom.dcmread(path)
        pairs = ybr[0].reshape(8, 5, 2, 3)
        ds.PixelData = np.stack([pairs[..., 0, 0], pairs[..., 1, 0], pairs[..., 0, 1], pairs[..., 0, 2]],
                                axis=-1).astype(np.uint8).tobytes()
        ds.PhotometricInterpretation = photometric
        ds.save_as(path)
    grey = read_images(path).data[0]
    np.testing.assert_allclose(grey, rgb2gray(rgb[0] / 255), atol=2 / 255)  # YBR rounds to within a step or two


def test_a_multi_frame_colour_file_scales_by_its_bits_stored(tmp_path):
    """12 bits stored in 16: 4095 is white, as 255 is for 8 bits (and 65535 for a 16-bit PNG)."""
    from skimage.color import rgb2gray

    rgb = _rgb(3, top=4095)
    rgb[0, 0, 0] = 4095
    path = _colour_series(tmp_path / "s", rgb, bits=12, frames=True)[0]
    volume = read_images(path)
    assert volume.data.shape == (3, 12, 10)
    np.testing.assert_allclose(volume.data, rgb2gray(rgb / 4095), atol=1e-6)
    assert volume.data[0, 0, 0] == pytest.approx(1.0, abs=1e-6)


def _palette(path, entries, bits, first=0):
    """Make ``path`` a PALETTE COLOR image with ``entries`` (E, 3) of ``bits`` (8 or 16) each."""
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation, ds.PixelRepresentation = "PALETTE COLOR", 0  # indices >= 0: the same bytes
    del ds.RescaleSlope, ds.RescaleIntercept
    for colour, values in zip(("Red", "Green", "Blue"), np.asarray(entries).T):
        ds.add_new(pydicom.datadict.tag_for_keyword(f"{colour}PaletteColorLookupTableDescriptor"), "US",
                   [len(values), first, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", values.astype(f"<u{bits // 8}").tobytes())
    ds.save_as(path)


@pytest.mark.parametrize("bits, first", [(8, 0), (16, 0), (16, 10)])
def test_a_palette_image_is_read_through_its_palette_then_grey(tmp_path, bits, first):
    """The palette's indices were read as grey values."""
    from skimage.color import rgb2gray

    top = 2 ** bits - 1
    rng = np.random.default_rng(2)
    entries = rng.integers(0, top + 1, (16, 3))
    entries[3] = top  # white
    indices = rng.integers(first, first + 16, (1, 12, 10))
    indices[0, 0, 0] = first + 3
    path = write_dicom_slices(tmp_path / "s", indices, intercept=0.0, modality="OT")[0]
    _palette(path, entries, bits, first)
    grey = read_images(path).data[0]
    np.testing.assert_allclose(grey, rgb2gray(entries[indices[0] - first] / top), atol=1e-6)
    assert grey[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("bits_stored, signed, slope", [(16, 1, 0.5), (12, 0, 1.0)])
def test_monochrome1_is_turned_over_the_same_way_on_every_slice(tmp_path, bits_stored, signed, slope):
    """MONOCHROME1 (smallest value white, as in many radiographs) was read as is, dark for bright; each
    slice's own min and max would turn slices over differently, the range the stored values can hold does not."""
    hu = _hu(3)
    hu[1] = np.clip(hu[1], 0, 500)  # a slice of another range than its neighbours
    paths = write_dicom_slices(tmp_path / "s", hu, slope=slope, intercept=-1024.0)  # 12 bits: stored 24..2524
    for path in paths:
        _edit(path, PhotometricInterpretation="MONOCHROME1", BitsStored=bits_stored, HighBit=bits_stored - 1,
              PixelRepresentation=signed, Modality="CR")
    low, high = (-32768, 32767) if signed else (0, 4095)
    volume = read_images(tmp_path / "s")
    np.testing.assert_allclose(volume.data, (low * slope - 1024) + (high * slope - 1024) - hu, atol=0.25)
    assert volume.units is None and volume.modality == "CR"


@pytest.mark.parametrize("rescale_type, in_hu", [(None, True), ("HU", True), ("US", False)])
def test_a_monochrome1_ct_rescaled_to_hounsfield_units_reads_as_hu(tmp_path, rescale_type, in_hu):
    """MONOCHROME1 says how to display values, the rescale what they are: a CT rescaled to HU is HU
    (turned over, air would be denser than bone, and a simulated sinogram would be of that). A rescale
    of another type is not HU, and is turned over as any MONOCHROME1 image."""
    hu = _hu(2)
    paths = write_dicom_slices(tmp_path / "s", hu, slope=1.0, intercept=-1024.0)
    for path in paths:
        _edit(path, PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11, PixelRepresentation=0,
              **({"RescaleType": rescale_type} if rescale_type else {}))
    volume = read_images(tmp_path / "s")
    if in_hu:
        np.testing.assert_allclose(volume.data, hu, atol=0.25)
        assert volume.units == "HU"
    else:
        np.testing.assert_allclose(volume.data, (0 - 1024) + (4095 - 1024) - hu, atol=0.25)
        assert volume.units is None


@pytest.mark.parametrize("damage, match", [
    ("mixed", r"mixes kinds of image \(2 MONOCHROME2 image\(s\) like .*; 1 colour or palette"),
    ("mixed-monochrome", r"mixes kinds of image \(2 MONOCHROME2 image\(s\) like .*; 1 MONOCHROME1 image\(s\) like .*file002.dcm"),
    ("samples", "4 samples per pixel"),
    ("colour-model", "colour DICOM images in HSV"),
    ("ybr16", "YBR_FULL with 16 bits per sample"),
    ("no-palette", "PALETTE COLOR image without its palette"),
    ("palette-bits", "palette entries up to 300, more than the 8 bits"),
])
def test_colour_images_that_cannot_be_read_are_refused_by_name(tmp_path, damage, match):
    paths = write_dicom_slices(tmp_path / "s", _hu(3))
    if damage == "mixed":
        _colour_series(tmp_path / "c", _rgb(1))
        os.replace(tmp_path / "c" / "file000.dcm", paths[0])
        _edit(paths[0], SeriesInstanceUID=pydicom.dcmread(paths[1]).SeriesInstanceUID)
    elif damage == "mixed-monochrome":  # radiographs: a CT in HU is HU in either (below)
        for path in paths:
            _edit(path, Modality="CR")
        _edit(paths[0], PhotometricInterpretation="MONOCHROME1")
    elif damage == "samples":
        _edit(paths[0], SamplesPerPixel=4, PhotometricInterpretation="CMYK")
    elif damage == "colour-model":
        _colour_series(tmp_path / "c", _rgb(1), photometric="HSV")
        paths = [str(tmp_path / "c" / "file000.dcm")]
    elif damage == "ybr16":
        _colour_series(tmp_path / "c", _rgb(1), photometric="YBR_FULL", bits=16)
        paths = [str(tmp_path / "c" / "file000.dcm")]
    elif damage == "no-palette":
        _edit(paths[0], PhotometricInterpretation="PALETTE COLOR")
    else:
        _palette(paths[0], np.full((16, 3), 300), 16)  # 16-bit entries that the descriptors call 8-bit
        _edit(paths[0], **{f"{c}PaletteColorLookupTableDescriptor": [16, 0, 8] for c in ("Red", "Green", "Blue")})
    with pytest.raises(ValueError, match=match):
        read_images(tmp_path / "s" if damage.startswith("mixed") else paths[0])


@pytest.mark.parametrize("like", ["RGB", "MONOCHROME1"])
def test_an_export_like_a_colour_or_monochrome1_series_is_greyscale_monochrome2(tmp_path, like):
    """The derived series takes the reference's geometry and study, never its pixel description: a colour
    or MONOCHROME1 reference gives MONOCHROME2 slices, and a reference not in HU is not written as HU."""
    from recon.io.export import export_result
    from recon.result import Result

    if like == "RGB":
        paths = _colour_series(tmp_path / "like", _rgb(2))
    else:
        paths = write_dicom_slices(tmp_path / "like", _hu(2))
        for path in paths:
            _edit(path, PhotometricInterpretation="MONOCHROME1", RescaleType="US")
    mean = np.linspace(0, 1, 2 * 12 * 10, dtype=np.float32).reshape(2, 1, 12, 10)
    Result(mean=mean, std=mean / 10).save(tmp_path / "r.h5")
    written = export_result(tmp_path / "r.h5", tmp_path / "out", like=tmp_path / "like", arrays=("mean",))
    first, source = pydicom.dcmread(written[0]), pydicom.dcmread(paths[0])
    assert (first.SamplesPerPixel, first.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert "PlanarConfiguration" not in first and "RescaleType" not in first
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    back = read_dicom(tmp_path / "out" / "mean")
    np.testing.assert_allclose(back.data, mean[:, 0], atol=1e-4)
    np.testing.assert_allclose(back.affine, read_dicom(tmp_path / "like").affine, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_modality_lut_sequence_maps_stored_values(tmp_path, photometric):
    """An X-ray image's Modality LUT Sequence (here a square law) was ignored: stored values were read as values.
    MONOCHROME1 is turned over within the range of the LUT's 16-bit entries."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.random.default_rng(3).integers(0, 256, (1, 12, 10))
    path = write_dicom_slices(tmp_path / "s", stored, intercept=0.0, modality="DX")[0]
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PhotometricInterpretation, ds.PixelRepresentation = photometric, 0
    lut = Dataset()
    lut.add_new(pydicom.datadict.tag_for_keyword("LUTDescriptor"), "US", [256, 0, 16])
    lut.add_new(pydicom.datadict.tag_for_keyword("LUTData"), "US", [v * v for v in range(256)])
    lut.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([lut])
    ds.save_as(path)
    expected = stored[0] ** 2.0
    np.testing.assert_allclose(read_images(path).data[0], expected if photometric == "MONOCHROME2"
                               else 65535 - expected)


@pytest.mark.parametrize("implicit", [True, False])
def test_a_file_meta_without_its_transfer_syntax_is_read_in_the_encoding_it_was_written_in(tmp_path, implicit):
    """Some writers leave (0002,0010) out; pydicom still reads the data set, and its pixels decode as that encoding."""
    hu = _hu(2)
    paths = write_dicom_slices(tmp_path / "s", hu)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.file_meta.TransferSyntaxUID
        ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
        assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    np.testing.assert_allclose(read_dicom(tmp_path / "s").data, hu)


def _float_series(folder, values, tag, dtype, **tags):
    """``values`` as a series of float pixel data (``tag``: Float or Double Float Pixel Data), with ``tags``
    (keyword: (VR, value)) set on every file."""
    paths = write_dicom_slices(folder, values)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        for key in ("PixelData", "RescaleSlope", "RescaleIntercept", "PixelRepresentation", "BitsStored", "HighBit"):
            if key in ds:
                delattr(ds, key)
        ds.BitsAllocated = 8 * np.dtype(dtype).itemsize
        setattr(ds, tag, values[k].astype(dtype).tobytes())
        for key, (vr, value) in tags.items():
            ds.add_new(pydicom.datadict.tag_for_keyword(key), vr, value)
        ds.save_as(path)
    return paths


@pytest.mark.parametrize("tag, dtype", [("FloatPixelData", np.float32), ("DoubleFloatPixelData", np.float64)])
def test_float_pixel_data_is_read_as_its_values(tmp_path, tag, dtype):
    """Parametric maps store 32- or 64-bit floats in their own element; they were skipped as 'no DICOM images'."""
    values = _hu(2) / 7.0
    _float_series(tmp_path / "s", values, tag, dtype)
    np.testing.assert_allclose(read_dicom(tmp_path / "s").data, values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tag, dtype, padding_key, vr", [
    ("FloatPixelData", np.float32, "FloatPixelPaddingValue", "FL"),
    ("DoubleFloatPixelData", np.float64, "DoubleFloatPixelPaddingValue", "FD")])
def test_float_pixel_data_padding_reads_as_the_lowest_real_value(tmp_path, tag, dtype, padding_key, vr):
    """A parametric map's (Double) Float Pixel Padding Value was read as a value (-1e6 among T1 times)."""
    values = _hu(2) / 7.0
    inside = np.broadcast_to(~_field_of_view(), values.shape)
    _float_series(tmp_path / "s", np.where(inside, values, -1e6), tag, dtype, **{padding_key: (vr, -1e6)})
    data = read_dicom(tmp_path / "s").data
    np.testing.assert_allclose(data[inside], values[inside], rtol=1e-6, atol=1e-6)
    assert np.all(data[~inside] == data[inside].min())


def test_a_compressed_series_decodes_through_pydicoms_decoders(tmp_path):
    """RLE Lossless, which pydicom decodes without extra packages, reads back exactly as the uncompressed series."""
    from pydicom.uid import RLELossless

    hu = _hu(2)
    paths = write_dicom_slices(tmp_path / "s", hu)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    volume = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(volume.data, hu)
    assert volume.units == "HU"


def _padded_series(folder, hu, outside, stored, **tags):
    """``hu`` as a CT series (stored = HU + 1024, signed 16 bits) whose pixels ``outside`` hold the stored
    values ``stored`` (padding outside the field of view), with the padding ``tags`` set on every file."""
    paths = write_dicom_slices(folder, hu)
    for path in paths:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[outside] = stored
        ds.PixelData = pixels.astype(np.int16).tobytes()
        for key, value in tags.items():  # SS as the pixels are signed, or (VR, value) as some writers give it
            ds.add_new(pydicom.datadict.tag_for_keyword(key), *(value if isinstance(value, tuple) else ("SS", value)))
        ds.save_as(path)
    return paths


def _field_of_view(h=12, w=10):
    """True outside a disc: the corners a CT's reconstruction circle leaves as padding."""
    rows, columns = np.mgrid[:h, :w]
    return (rows - (h - 1) / 2) ** 2 + (columns - (w - 1) / 2) ** 2 > 25


@pytest.mark.parametrize("padding, stored", [
    (-2000, -2000),
    (("US", 32768), -32768),  # a signed image's -32768 written as US by some systems: the same 16 bits
])
def test_padding_outside_the_field_of_view_reads_as_the_lowest_real_value(tmp_path, caplog, padding, stored):
    """PixelPaddingValue was ignored: -2000 stored (-3024 HU) outside the field of view was read as tissue far
    below air, which stretched the intensity range and put negative attenuation into the simulation."""
    hu, outside = _hu(3), _field_of_view()
    _padded_series(tmp_path / "s", hu, outside, stored, PixelPaddingValue=padding)
    with caplog.at_level("INFO", logger="recon.io.dicom"):
        volume = read_images(tmp_path / "s")
    inside = np.broadcast_to(~outside, hu.shape)
    np.testing.assert_array_equal(volume.data[inside], hu[inside])  # real pixels as they were
    np.testing.assert_array_equal(volume.data[~inside], hu[inside].min())  # padding: the darkest real value
    assert volume.data.min() == hu[inside].min() and volume.units == "HU"
    assert f"{3 * outside.sum()} pixels in 3 of 3 images are padding" in caplog.text


@pytest.mark.parametrize("value, limit", [(-2000, -1990), (-1990, -2000)])
def test_a_padding_range_limit_makes_a_closed_range_of_stored_values_padding(tmp_path, value, limit):
    hu, outside = _hu(3), _field_of_view()
    paths = _padded_series(tmp_path / "s", hu, outside, -2000, PixelPaddingValue=value, PixelPaddingRangeLimit=limit)
    ds = pydicom.dcmread(paths[1])
    pixels = ds.pixel_array.copy()
    pixels[0, :3] = [-1995, -1990, -1989]  # inside the range, its end, and just past it: a real value
    ds.PixelData = pixels.tobytes()
    ds.save_as(paths[1])
    volume = read_images(tmp_path / "s")
    lowest = -1989 - 1024  # the one real pixel below air is now the darkest
    np.testing.assert_array_equal(volume.data[1, 0, :3], [lowest, lowest, -1989 - 1024])
    np.testing.assert_array_equal(volume.data[np.broadcast_to(outside, hu.shape)], lowest)
    assert volume.data.min() == lowest


def test_a_series_without_padding_tags_reads_every_stored_value(tmp_path, caplog):
    hu = _hu(3)
    hu[:, _field_of_view()] = -3024  # stored -2000, which is padding only where a tag says so
    write_dicom_slices(tmp_path / "s", hu)
    with caplog.at_level("INFO", logger="recon.io.dicom"):
        volume = read_images(tmp_path / "s")
    np.testing.assert_array_equal(volume.data, hu)
    assert "padding" not in caplog.text


def test_an_image_that_is_all_padding_reads_as_the_lowest_value_with_a_warning(tmp_path, caplog):
    """A blank slice at a series' edge; a series that is all padding holds no image and is refused."""
    hu = _hu(3)
    paths = _padded_series(tmp_path / "s", hu, _field_of_view(), -2000, PixelPaddingValue=-2000)
    _edit(paths[2], PixelData=np.full(hu.shape[1:], -2000, np.int16).tobytes())
    with caplog.at_level("WARNING", logger="recon.io.dicom"):
        data = read_images(tmp_path / "s").data
    assert "1 images are all padding" in caplog.text and "file000.dcm" in caplog.text
    blank = [k for k in range(3) if np.ptp(data[k]) == 0]
    assert len(blank) == 1 and data[blank[0]].min() == data.min() > -1500
    for path in paths:
        _edit(path, PixelData=np.full(hu.shape[1:], -2000, np.int16).tobytes())
    with pytest.raises(ValueError, match=r"every pixel of every image is padding \(stored value -2000"):
        read_images(tmp_path / "s")


def test_a_malformed_padding_value_is_refused_by_file_and_tag(tmp_path):
    _padded_series(tmp_path / "s", _hu(2), _field_of_view(), -2000, PixelPaddingValue=("DS", "-2000.5"))
    with pytest.raises(ValueError, match=r"file001\.dcm: PixelPaddingValue is .*-2000\.5.*expected one whole number"):
        read_images(tmp_path / "s")


def _with_padding_tags(paths, **tags):
    """Add the padding ``tags`` (``(VR, value)``) to every file of ``paths``."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for key, (vr, value) in tags.items():
            ds.add_new(pydicom.datadict.tag_for_keyword(key), vr, value)
        ds.save_as(path)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL", "PALETTE COLOR"])
@pytest.mark.parametrize("tags", [
    {"PixelPaddingValue": ("US", 0)},  # a sample value the image holds
    {"PixelPaddingValue": ("US", 0), "PixelPaddingRangeLimit": ("US", 40)},
    {"PixelPaddingValue": ("DS", "0.5")},  # malformed: refused on a greyscale image, no matter here
])
def test_a_padding_tag_on_a_colour_image_is_ignored(tmp_path, caplog, photometric, tags):
    """Pixel Padding Value pads greyscale images only (MONOCHROME1 or MONOCHROME2, DICOM PS3.3 C.7.5.1.1.2):
    on a colour or palette image it names no pixel, and a malformed one is no reason to refuse the image.
    Matched anyway, a palette's indices equal to it would read as the lowest grey of the series, and an RGB
    image's samples would give three padding masks per grey pixel (an IndexError)."""
    if photometric == "PALETTE COLOR":
        indices, entries = np.broadcast_to(np.arange(10), (2, 12, 10)), _rgb(1, 1, 16)[0, 0]  # index 0 among them
        folders = []
        for name in ("plain", "padded"):
            paths = write_dicom_slices(tmp_path / name, indices, intercept=0.0, modality="OT")
            for path in paths:
                _palette(path, entries, 8)
            folders.append((tmp_path / name, paths))
    else:
        colours = _rgb(2)
        colours[:, :4] = 0  # samples equal to the padding value
        folders = [(tmp_path / name, _colour_series(tmp_path / name, colours, photometric=photometric))
                   for name in ("plain", "padded")]
    _with_padding_tags(folders[1][1], **tags)
    with caplog.at_level("INFO", logger="recon.io.dicom"):
        padded = read_images(folders[1][0])
    np.testing.assert_array_equal(padded.data, read_images(folders[0][0]).data)
    assert "padding" not in caplog.text
