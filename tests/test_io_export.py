"""recon.io.export: results back in the source's units and geometry, as NIfTI, DICOM series and TIFF."""

import h5py
import nibabel
import numpy as np
import pydicom
import pytest
from conftest import write_dicom_slices

from recon.io import read_dicom
from recon.io.export import export_result, output_paths
from recon.io.simulate import simulate_study


@pytest.fixture(scope="module")
def batch_output(tmp_path_factory):
    """A 3-slice CT DICOM series -> recon simulate -> recon batch (fbp): the user's path through the package."""
    import recon.batch

    root = tmp_path_factory.mktemp("export")
    hu = np.full((3, 32, 32), -1000.0)
    hu[:, 6:26, 8:24] = np.arange(3)[:, None, None] * 100.0 + 50
    write_dicom_slices(root / "series", hu)
    study = simulate_study([root / "series"], root / "study.h5", "ct", n_angles=40, noise=0.0)
    summary = recon.batch.run([str(study)], str(root / "runs"), method="fbp", progress=None)
    assert summary.ok
    return root, summary.outputs[0]


def test_nifti_export_is_in_hounsfield_units_on_the_series_geometry(batch_output, tmp_path):
    root, output = batch_output
    written = export_result(output, tmp_path / "ct.nii.gz")
    assert written == [str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_std.nii.gz")]
    source = read_dicom(root / "series")
    image = nibabel.load(written[0])
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-6)
    with h5py.File(output) as f:
        stored = f["mean"][:, 0]
    mean_hu = np.transpose(image.get_fdata(), (2, 1, 0))
    np.testing.assert_allclose(mean_hu, stored * 2500.0 - 1000.0, atol=1e-2)
    assert abs(np.median(mean_hu[2, 10:22, 12:20]) - 250) < 60  # the tissue block of slice 2, in HU
    assert np.abs(np.median(mean_hu[:, :3, :3]) + 1000) < 60  # air


def test_dicom_export_adds_two_series_to_the_patients_study(batch_output, tmp_path):
    root, output = batch_output
    written = export_result(output, tmp_path / "dicom")
    assert len(written) == 6  # 3 slices x (mean, std)
    mean, std = pydicom.dcmread(tmp_path / "dicom" / "mean" / "IM000001.dcm"), \
        pydicom.dcmread(tmp_path / "dicom" / "std" / "IM000001.dcm")
    source = pydicom.dcmread(read_dicom(root / "series").sources[0])
    assert mean.StudyInstanceUID == source.StudyInstanceUID == std.StudyInstanceUID
    assert len({mean.SeriesInstanceUID, std.SeriesInstanceUID, source.SeriesInstanceUID}) == 3
    assert mean.Modality == "CT" and mean.ImagePositionPatient == source.ImagePositionPatient
    stored = export_result(output, tmp_path / "stored", arrays=("mean",), units="stored")
    assert pydicom.dcmread(stored[0]).SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # [0, 1] values are not HU: no CT
    nifti = export_result(output, tmp_path / "ref.nii", arrays=("mean",))
    back = read_dicom(tmp_path / "dicom" / "mean").data
    np.testing.assert_allclose(back, np.transpose(nibabel.load(nifti[0]).get_fdata(), (2, 1, 0)), atol=0.05)


def test_a_single_result_exports_as_stored_and_a_tiff_too(tmp_path):
    import tifffile

    from recon.result import Result

    mean = np.random.default_rng(0).random((1, 16, 12)).astype(np.float32)
    Result(mean=mean, std=mean / 10, metadata={"method": "tv"}).save(tmp_path / "r.h5")
    written = export_result(tmp_path / "r.h5", tmp_path / "r.tif")
    np.testing.assert_array_equal(tifffile.imread(written[0]), mean)  # (slices, H, W) pages
    np.testing.assert_allclose(tifffile.imread(written[1]), mean / 10)
    image = nibabel.load(export_result(tmp_path / "r.h5", tmp_path / "r.nii", arrays=("std",))[0])
    np.testing.assert_allclose(image.affine, np.eye(4))


@pytest.mark.parametrize("slices", [3, 4])
def test_a_tiff_export_of_three_or_four_slices_reads_back_as_slices_not_one_colour_picture(tmp_path, slices):
    """tifffile's default wrote 3 or 4 pages as one RGB(A) picture in separate planes, read back as one image."""
    from recon.io import read_images
    from recon.result import Result

    mean = np.random.default_rng(0).random((slices, 9, 8)).astype(np.float32)
    Result(mean=mean[:, None], std=mean[:, None] / 10, metadata={"method": "tv"}).save(tmp_path / "r.h5")
    written = export_result(tmp_path / "r.h5", tmp_path / "r.tif", arrays=("mean",))
    np.testing.assert_array_equal(read_images(written[0]).data, mean)


def test_overwrite_replaces_a_link_at_the_tiff_name_not_the_file_it_points_at(tmp_path):
    import tifffile

    from recon.result import Result

    mean = np.full((1, 8, 8), 0.5, np.float32)
    Result(mean=mean, std=mean / 10, metadata={"method": "tv"}).save(tmp_path / "r.h5")
    users = tmp_path / "users_image.tif"
    tifffile.imwrite(users, np.zeros((4, 4), np.float32))
    before = users.read_bytes()
    (tmp_path / "out.tif").symlink_to(users)
    written = export_result(tmp_path / "r.h5", tmp_path / "out.tif", arrays=("mean",), overwrite=True)
    assert users.read_bytes() == before and not (tmp_path / "out.tif").is_symlink()
    np.testing.assert_array_equal(tifffile.imread(written[0]), mean)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "r.h5", "users_image.tif"]  # no temporary left


def test_unfinished_slices_and_existing_outputs_are_refused_before_anything_is_written(tmp_path):
    from recon.result import Result

    mean = np.ones((2, 1, 8, 8), np.float32)
    mean[1] = np.nan
    Result(mean=mean, std=np.zeros_like(mean)).save(tmp_path / "partial.h5")
    with pytest.raises(ValueError, match=r"slice\(s\) \[1\]"):
        export_result(tmp_path / "partial.h5", tmp_path / "p.nii")
    Result(mean=mean[:1], std=mean[:1]).save(tmp_path / "done.h5")
    (tmp_path / "p_std.nii").write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="p_std.nii exists"):
        export_result(tmp_path / "done.h5", tmp_path / "p.nii")
    assert not (tmp_path / "p.nii").exists()


def test_a_dicom_export_into_the_source_series_folder_is_refused(batch_output):
    """It added mean/ and std/ series there, and the source folder no longer read as one series."""
    root, output = batch_output
    before = sorted(p.name for p in (root / "series").iterdir())
    with pytest.raises(ValueError, match="holds DICOM files"):
        export_result(output, root / "series")
    assert sorted(p.name for p in (root / "series").iterdir()) == before
    assert read_dicom(root / "series").data.shape == (3, 32, 32)


def test_overwrite_refuses_a_folder_of_a_users_files_before_writing_either_series(tmp_path):
    """The std folder's foreign file was found only after the mean series had been replaced."""
    from recon.result import Result

    mean = np.ones((1, 1, 8, 8), np.float32)
    Result(mean=mean, std=mean / 10).save(tmp_path / "r.h5")
    export_result(tmp_path / "r.h5", tmp_path / "out")
    first = sorted((tmp_path / "out" / "mean").iterdir())[0].read_bytes()
    (tmp_path / "out" / "std" / "notes.txt").write_text("a user's file")
    Result(mean=mean * 2, std=mean / 10).save(tmp_path / "r2.h5")
    with pytest.raises(ValueError, match="did not write"):
        export_result(tmp_path / "r2.h5", tmp_path / "out", overwrite=True)
    assert sorted((tmp_path / "out" / "mean").iterdir())[0].read_bytes() == first


def test_output_names():
    assert output_paths("a/b.nii.gz", ("mean", "std")) == {"mean": "a/b.nii.gz", "std": "a/b_std.nii.gz"}
    assert output_paths("out", ("std",)) == {"std": "out/std"}


def test_overwrite_never_writes_over_the_result_or_the_like_images(tmp_path):
    """--like scan.nii --out scan.nii --overwrite replaced the reference scan with the result (its _std twin too)."""
    from recon.io.nifti import write_nifti
    from recon.result import Result

    mean = np.full((1, 1, 8, 8), 0.5, np.float32)
    Result(mean=mean, std=mean / 10).save(tmp_path / "r.h5")
    for name in ("scan.nii", "scan2_std.nii"):
        write_nifti(tmp_path / name, np.full((1, 8, 8), 7.0), np.diag([2.0, 2.0, 2.0, 1.0]))
    before = {name: (tmp_path / name).read_bytes() for name in ("r.h5", "scan.nii", "scan2_std.nii")}
    with pytest.raises(ValueError, match="is the input"):
        export_result(tmp_path / "r.h5", tmp_path / "scan.nii", like=tmp_path / "scan.nii", overwrite=True)
    with pytest.raises(ValueError, match="is the input"):
        export_result(tmp_path / "r.h5", tmp_path / "scan2.nii", like=tmp_path / "scan2_std.nii", overwrite=True)
    with pytest.raises(ValueError, match="r.h5 exists and is not a folder"):
        export_result(tmp_path / "r.h5", tmp_path / "r.h5", overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not (tmp_path / "scan2.nii").exists()
    export_result(tmp_path / "r.h5", tmp_path / "first")
    series = sorted((tmp_path / "first" / "mean").iterdir())[0].read_bytes()
    with pytest.raises(ValueError, match="holds the input"):
        export_result(tmp_path / "r.h5", tmp_path / "first", like=tmp_path / "first" / "mean", overwrite=True)
    assert sorted((tmp_path / "first" / "mean").iterdir())[0].read_bytes() == series


def test_an_array_of_another_shape_is_refused_naming_the_shapes_export_takes(batch_output, tmp_path):
    _, output = batch_output
    copy = tmp_path / "result.h5"
    copy.write_bytes(open(output, "rb").read())
    with h5py.File(copy, "a") as f:
        for name in ("mean", "std"):  # (N, 1, 1, H, W): a volume per slice
            value = f[name][()]
            del f[name]
            f[name] = value[:, :, None]
    with pytest.raises(ValueError, match=r"'mean' has shape \(3, 1, 1, 32, 32\).*\(1, H, W\) or \(N, 1, H, W\)"):
        export_result(copy, tmp_path / "out.nii", arrays=("mean",))
