"""recon.io.nifti: a volume read as slices along its third axis and written back voxel for voxel."""

import gzip

import nibabel
import numpy as np
import pytest

from recon.io import read_images, read_nifti, write_nifti


def test_a_complex_nifti_is_refused_not_cut_to_its_real_part(tmp_path):
    path = tmp_path / "complex.nii"
    nibabel.save(nibabel.Nifti1Image(np.full((4, 4, 2), 1 + 2j, np.complex64), np.eye(4)), path)
    with pytest.raises(ValueError, match="real numbers.*complex64"):
        read_images(str(path))


@pytest.fixture
def volume_file(tmp_path):
    voxels = np.random.default_rng(0).normal(size=(10, 12, 5)).astype(np.float32)  # (x, y, z)
    affine = np.array([[-0.9, 0, 0, 40], [0, 1.1, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    path = tmp_path / "t1.nii.gz"
    nibabel.save(nibabel.Nifti1Image(voxels, affine), path)
    return path, voxels, affine


def test_slices_run_along_the_third_axis_and_keep_the_affine(volume_file):
    path, voxels, affine = volume_file
    volume = read_images(path)
    assert volume.data.shape == (5, 12, 10)
    np.testing.assert_array_equal(volume.data[2, 7, 3], voxels[3, 7, 2])
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((3.0, 1.1, 0.9))


@pytest.mark.parametrize("name", ["back.nii", "back.nii.gz"])
def test_write_then_read_gives_the_same_voxels_and_affine(volume_file, tmp_path, name):
    path, voxels, affine = volume_file
    volume = read_nifti(path)
    out = write_nifti(tmp_path / name, volume.data, volume.affine)
    image = nibabel.load(out)
    np.testing.assert_array_equal(image.get_fdata(), voxels)
    np.testing.assert_allclose(image.affine, affine)
    assert image.header.get_xyzt_units()[0] == "mm"


def test_an_existing_file_or_a_wrong_name_is_refused(volume_file, tmp_path):
    path, _, _ = volume_file
    before = path.read_bytes()
    with pytest.raises(ValueError, match="exists"):
        write_nifti(path, np.zeros((1, 4, 4)))
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(tmp_path / "out.h5", np.zeros((1, 4, 4)))


def test_a_singular_affine_is_refused_by_value_not_by_nibabel(tmp_path):
    """A zero voxel size (say from a DICOM PixelSpacing of 0) raised nibabel's HeaderDataError: exit 1, no hint."""
    with pytest.raises(ValueError, match="voxel axes"):
        write_nifti(tmp_path / "out.nii", np.zeros((1, 4, 4)), np.diag([0.0, 0.0, 2.5, 1.0]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, match", [
    (gzip.compress(b"not a nifti header" * 30), "cannot read"),
    (b"", "cannot read"),
])
def test_a_damaged_file_is_refused_by_name(tmp_path, content, match):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_images(bad)
    assert "bad.nii.gz" in str(info.value)


def test_trailing_axes_of_one_hold_one_volume(tmp_path):
    """A 5-D header (X, Y, Z, 1, 1), as some converters write, is one volume: it was refused as a time series."""
    path = tmp_path / "five.nii"
    values = np.random.default_rng(0).random((4, 5, 3, 1, 1)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), path)
    volume = read_images(path)
    assert np.array_equal(volume.data, np.transpose(values[..., 0, 0], (2, 1, 0)))


def test_a_time_series_is_refused(tmp_path):
    path = tmp_path / "fmri.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match="time series"):
        read_images(path)


@pytest.mark.parametrize("row_x", [[0.0, 0.0, 0.0, 0.0], [np.nan, 0.0, 0.0, 0.0]])
def test_an_affine_that_cannot_place_voxels_is_read_as_no_geometry(tmp_path, caplog, row_x):
    """An sform of zeros or NaN was kept: a spacing of 0 or NaN (simulate --dose raised ZeroDivisionError) and a
    DICOM export like it wrote NaN in ImageOrientationPatient; it says nothing, as a DICOM PixelSpacing of 0."""
    import pydicom

    from recon.io import write_dicom_series
    from recon.io.simulate import simulate_study

    voxels = np.random.default_rng(0).random((8, 8, 2)).astype(np.float32)
    image = nibabel.Nifti1Image(voxels, None)
    image.header["sform_code"], image.header["qform_code"] = 1, 0
    image.header["srow_x"], image.header["srow_y"], image.header["srow_z"] = row_x, [0, 1, 0, 0], [0, 0, 1, 0]
    path = tmp_path / "bad_sform.nii"
    nibabel.save(image, path)
    with caplog.at_level("WARNING", logger="recon.io.nifti"):
        volume = read_images(path)
    np.testing.assert_array_equal(volume.data, np.transpose(voxels, (2, 1, 0)))
    assert volume.affine is None and volume.spacing is None
    assert "bad_sform.nii" in caplog.text and "without geometry" in caplog.text
    written = write_dicom_series(tmp_path / "dicom", volume.data, reference=volume)
    assert "ImageOrientationPatient" not in pydicom.dcmread(written[0])
    study = simulate_study([path], tmp_path / "study.h5", "ct", n_angles=10, dose=1e4)
    import h5py

    with h5py.File(study) as f:
        assert np.isfinite(f["measurement"][()]).all() and "affine" not in f.attrs


@pytest.mark.parametrize("unit, scale", [("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_voxel_sizes_in_other_units_are_read_in_mm(tmp_path, unit, scale):
    """A 0.5 micron file was read (and written back, and dosed) as 500 mm voxels."""
    image = nibabel.Nifti1Image(np.ones((4, 4, 2), np.float32), np.diag([500.0, 500.0, 2000.0, 1.0]))
    image.header.set_xyzt_units(unit)
    nibabel.save(image, tmp_path / "v.nii.gz")
    assert read_images(tmp_path / "v.nii.gz").spacing == pytest.approx((2000 * scale, 500 * scale, 500 * scale))


def test_a_slice_stored_along_the_first_axis_is_refused_not_read_as_one_pixel_wide_slices(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.ones((1, 24, 32), np.float32), np.eye(4)), tmp_path / "sagittal.nii.gz")
    with pytest.raises(ValueError, match="slices of 24 x 1 pixels"):
        read_images(tmp_path / "sagittal.nii.gz")


def test_the_space_an_affine_maps_into_is_read_and_written_back(tmp_path):
    """An MNI-space volume came back labelled 'aligned' with no qform: a tool reading the qform found no
    geometry, and one reading the code took the voxels for another space."""
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [90, -126, -72]
    image = nibabel.Nifti1Image(np.random.default_rng(0).random((6, 7, 3)).astype(np.float32), affine)
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    nibabel.save(image, tmp_path / "mni.nii.gz")
    volume = read_nifti(tmp_path / "mni.nii.gz")
    assert volume.space == "mni"
    back = nibabel.load(write_nifti(tmp_path / "back.nii.gz", volume.data, volume.affine, space=volume.space))
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (4, 4)
    np.testing.assert_allclose(back.get_qform(), affine, atol=1e-5)


def test_a_sheared_affine_goes_into_the_sform_only(tmp_path):
    """A qform holds a rotation and voxel sizes: nibabel fitted one to a tilted gantry's affine silently."""
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[1, 2] = 0.4  # slices shifted along y as they go: a tilted gantry
    back = nibabel.load(write_nifti(tmp_path / "tilt.nii", np.zeros((3, 4, 5)), affine))
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (2, 0)
    np.testing.assert_allclose(read_nifti(tmp_path / "tilt.nii").affine, affine, atol=1e-6)
    with pytest.raises(ValueError, match="space must be one of"):
        write_nifti(tmp_path / "x.nii", np.zeros((3, 4, 5)), affine, space="talairach2")


def test_a_nifti_never_replaces_a_file_that_appears_while_it_is_written(tmp_path, monkeypatch):
    """The existence check came before the write, the rename after it: a file made in between was replaced."""
    target = tmp_path / "mean.nii.gz"
    save = nibabel.save

    def save_then_newcomer(image, name):
        save(image, name)
        target.write_text("newcomer")

    monkeypatch.setattr(nibabel, "save", save_then_newcomer)
    with pytest.raises(FileExistsError, match="appeared while it was written; not replaced"):
        write_nifti(target, np.zeros((2, 4, 4), np.float32))
    assert target.read_text() == "newcomer" and [p.name for p in tmp_path.iterdir()] == ["mean.nii.gz"]
    write_nifti(target, np.ones((2, 4, 4), np.float32), overwrite=True)  # asked to: replaced
    monkeypatch.undo()
    assert read_nifti(target).data.max() == 1
