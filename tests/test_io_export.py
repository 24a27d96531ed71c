"""recon.io.export: results back in the source's units and geometry, as NIfTI, DICOM series and TIFF."""

import os

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
    # the scanner's coordinates, in the sform and the qform as a DICOM converter writes them (was: aligned, no qform)
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (1, 1)
    np.testing.assert_allclose(image.get_qform(), source.affine, atol=1e-4)
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


def test_a_tiff_never_replaces_a_file_that_appears_while_it_is_written(tmp_path, monkeypatch):
    import tifffile

    from recon.result import Result

    Result(mean=np.zeros((1, 8, 8), np.float32), std=np.zeros((1, 8, 8), np.float32)).save(tmp_path / "r.h5")
    imwrite = tifffile.imwrite

    def imwrite_then_newcomer(name, *args, **kwargs):
        imwrite(name, *args, **kwargs)
        (tmp_path / "r.tif").write_text("newcomer")

    monkeypatch.setattr(tifffile, "imwrite", imwrite_then_newcomer)
    with pytest.raises(FileExistsError, match="appeared while it was written; not replaced"):
        export_result(tmp_path / "r.h5", tmp_path / "r.tif", arrays=("mean",))
    assert (tmp_path / "r.tif").read_text() == "newcomer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5", "r.tif"]


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
    with pytest.raises(ValueError, match="not .h5: .*r.h5' would be a folder of DICOM series"):
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


def _nifti_pipeline(root, name="scan.nii.gz"):
    """A 3-slice NIfTI -> recon simulate -> recon batch (fbp): the study and the output."""
    import recon.batch
    from recon.io.nifti import write_nifti

    volume = np.zeros((3, 32, 32))
    volume[:, 8:24, 10:22] = 0.6
    write_nifti(root / name, volume, np.diag([0.7, 0.8, 2.0, 1.0]))
    study = simulate_study([root / name], root / "study.h5", "ct", n_angles=20, noise=0.0)
    summary = recon.batch.run([str(study)], str(root / "runs"), method="fbp", progress=None)
    assert summary.ok
    return study, summary.outputs[0]


def test_a_study_replaced_or_gone_since_the_batch_is_refused_not_taken_for_the_source(tmp_path):
    """Export took geometry, units and patient from whatever file sat at the study's path (another scan's)."""
    study, output = _nifti_pipeline(tmp_path)
    exported = export_result(output, tmp_path / "before.nii.gz", arrays=("mean",))
    expected_affine = nibabel.load(exported[0]).affine
    other = np.zeros((3, 32, 32))
    other[:, 4:12, 4:12] = 0.9
    from recon.io.nifti import write_nifti

    write_nifti(tmp_path / "other.nii.gz", other, np.diag([0.3, 0.3, 5.0, 1.0]))
    simulate_study([tmp_path / "other.nii.gz"], study, "ct", n_angles=20, noise=0.0, overwrite=True)
    with pytest.raises(ValueError, match="is not the study this result was computed from"):
        export_result(output, tmp_path / "after.nii.gz")
    like = export_result(output, tmp_path / "like.nii.gz", like=tmp_path / "scan.nii.gz", units="stored")
    np.testing.assert_allclose(nibabel.load(like[0]).affine, expected_affine)  # the way out the message names
    os.remove(study)
    with pytest.raises(ValueError, match="study .* is not there"):
        export_result(output, tmp_path / "gone.nii.gz")
    assert not (tmp_path / "after.nii.gz").exists() and not (tmp_path / "gone.nii.gz").exists()


def test_the_mean_keeps_the_plain_name_whatever_order_the_arrays_are_asked_in(tmp_path):
    from recon.result import Result

    mean = np.full((1, 8, 8), 0.5, np.float32)
    Result(mean=mean, std=mean / 10).save(tmp_path / "r.h5")
    written = export_result(tmp_path / "r.h5", tmp_path / "a.nii.gz", arrays=("std", "mean"))
    assert sorted(written) == [str(tmp_path / "a.nii.gz"), str(tmp_path / "a_std.nii.gz")]
    assert np.allclose(nibabel.load(tmp_path / "a.nii.gz").get_fdata(), 0.5)  # was the std
    assert export_result(tmp_path / "r.h5", tmp_path / "b.nii.gz", arrays=("std",)) == [str(tmp_path / "b_std.nii.gz")]


@pytest.mark.parametrize("name", ["r1.npy", "r1.png", "out.h5"])
def test_an_out_named_as_a_file_export_does_not_write_is_refused(tmp_path, name):
    """--out r1.npy made a folder r1.npy/ of DICOM series."""
    from recon.result import Result

    Result(mean=np.zeros((1, 8, 8), np.float32), std=np.zeros((1, 8, 8), np.float32)).save(tmp_path / "r.h5")
    with pytest.raises(ValueError, match="export writes NIfTI .* or a DICOM folder"):
        export_result(tmp_path / "r.h5", tmp_path / name)
    assert not (tmp_path / name).exists()


def test_the_mean_and_std_series_of_one_export_share_their_study_and_frame_of_reference(tmp_path):
    """From a NIfTI source each series drew its own study UID: viewers took them for two studies."""
    _, output = _nifti_pipeline(tmp_path)
    export_result(output, tmp_path / "dicom")
    mean, std = (pydicom.dcmread(tmp_path / "dicom" / name / "IM000001.dcm") for name in ("mean", "std"))
    assert mean.StudyInstanceUID == std.StudyInstanceUID and mean.FrameOfReferenceUID == std.FrameOfReferenceUID
    assert mean.SeriesInstanceUID != std.SeriesInstanceUID


def test_a_patient_name_outside_ascii_survives_a_dicom_export(tmp_path):
    """Without a declared character set pydicom wrote '??^??' for 山田^太郎."""
    from recon.io.dicom import write_dicom_series
    from recon.io.slices import Volume

    reference = Volume(np.zeros((2, 8, 8), np.float32), affine=np.eye(4), modality="CT",
                       dicom={"PatientName": "山田^太郎", "StudyDescription": "Schädel nativ"})
    paths = write_dicom_series(tmp_path / "s", np.ones((2, 8, 8)), reference=reference)
    back = pydicom.dcmread(paths[0])
    assert str(back.PatientName) == "山田^太郎" and back.StudyDescription == "Schädel nativ"
    assert read_dicom(tmp_path / "s").dicom["PatientName"] == "山田^太郎"


def test_a_dicom_export_into_a_folder_with_a_series_below_it_is_refused(batch_output):
    """--out patient, the series at patient/CT: mean/ and std/ were written beside it, and the patient folder
    then read as three series."""
    import shutil

    root, output = batch_output
    patient = root / "patient"
    shutil.copytree(root / "series", patient / "CT")
    with pytest.raises(ValueError, match="holds DICOM files"):
        export_result(output, patient)
    assert sorted(p.name for p in patient.iterdir()) == ["CT"]
    assert read_dicom(patient).data.shape == (3, 32, 32)


def test_an_earlier_exports_series_do_not_stop_a_new_export_of_one_array(tmp_path):
    """Only the mean/ and std/ folders an export writes are passed over: --array std --overwrite after a
    full export rewrites std/ and leaves mean/ as it was."""
    from recon.result import Result

    mean = np.ones((1, 1, 8, 8), np.float32)
    Result(mean=mean, std=mean / 10).save(tmp_path / "r.h5")
    export_result(tmp_path / "r.h5", tmp_path / "out")
    first = sorted((tmp_path / "out" / "mean").iterdir())[0].read_bytes()
    Result(mean=mean, std=mean / 5).save(tmp_path / "r2.h5")
    export_result(tmp_path / "r2.h5", tmp_path / "out", arrays=("std",), overwrite=True)
    assert sorted((tmp_path / "out" / "mean").iterdir())[0].read_bytes() == first
    assert np.allclose(read_dicom(tmp_path / "out" / "std").data, 0.2, atol=1e-3)


def test_a_dicom_export_inside_the_source_series_folder_is_refused(batch_output):
    """--out SERIES/recon wrote mean/ and std/ below the series, which then read as three."""
    root, output = batch_output
    before = sorted(p.name for p in (root / "series").iterdir())
    with pytest.raises(ValueError, match="lies inside .*series, which holds DICOM files"):
        export_result(output, root / "series" / "recon")
    assert sorted(p.name for p in (root / "series").iterdir()) == before
    assert read_dicom(root / "series").data.shape == (3, 32, 32)


def test_overwrite_never_replaces_the_scan_the_study_was_simulated_from(tmp_path):
    """Without --like, --out scan.nii.gz --overwrite replaced the scan recon simulate had read."""
    _, output = _nifti_pipeline(tmp_path)
    before = (tmp_path / "scan.nii.gz").read_bytes()
    with pytest.raises(ValueError, match="is the input"):
        export_result(output, tmp_path / "scan.nii.gz", overwrite=True)
    assert (tmp_path / "scan.nii.gz").read_bytes() == before


def test_the_series_names_the_batch_method_keeps_the_thickness_and_a_valid_window(tmp_path):
    """A batch output's series said 'diffrecon result mean'; SliceThickness was the spacing; a std's window
    was narrower than 1 under LINEAR, which readers refuse."""
    from pydicom.pixels import apply_voi_lut

    import recon.batch

    hu = np.full((3, 16, 16), -1000.0)
    hu[:, 4:12, 4:12] = 40.0
    write_dicom_slices(tmp_path / "series", hu, spacing=(1.25, 0.8, 0.7), thickness=2.5)
    study = simulate_study([tmp_path / "series"], tmp_path / "study.h5", "ct", n_angles=20, noise=0.0)
    output = recon.batch.run([str(study)], str(tmp_path / "runs"), method="fbp", progress=None).outputs[0]
    export_result(output, tmp_path / "dicom")
    mean, std = (pydicom.dcmread(tmp_path / "dicom" / name / "IM000001.dcm") for name in ("mean", "std"))
    assert mean.SeriesDescription == "diffrecon fbp mean"
    assert float(mean.SliceThickness) == 2.5 and float(mean.SpacingBetweenSlices) == pytest.approx(1.25)
    assert float(std.WindowWidth) < 1 and std.VOILUTFunction == "LINEAR_EXACT"
    assert np.isfinite(apply_voi_lut(std.pixel_array, std)).all()
    assert "VOILUTFunction" not in mean  # HU: a window far wider than 1


def test_a_failed_slice_is_named_as_failed_not_as_unfinished(tmp_path):
    """A slice the batch failed was 'not done (NaN); finish the batch run first', which a rerun never mends."""
    import recon.batch
    from recon.demo import write_native_ct

    images = np.zeros((2, 16, 16), np.float32)
    images[:, 4:12, 4:12] = 0.5
    study = write_native_ct(str(tmp_path / "study.h5"), images, n_angles=20)
    with h5py.File(study, "a") as f:
        y = f["measurement"][()]
        y[1, 0, 0] = np.nan
        f["measurement"][...] = y
    output = recon.batch.run([study], str(tmp_path / "runs"), method="fbp", progress=None).outputs[0]
    with pytest.raises(ValueError, match=r"slice\(s\) \[1\] failed in the batch run \(.*NaN"):
        export_result(output, tmp_path / "out.nii")
    with h5py.File(output, "a") as f:  # an Inf is said to be one
        f["status"][1] = "done"
        mean = f["mean"][()]
        mean[1] = np.inf
        f["mean"][...] = mean
    with pytest.raises(ValueError, match=r"slice\(s\) \[1\] of 'mean' hold Inf"):
        export_result(output, tmp_path / "out.nii", arrays=("mean",))


@pytest.mark.parametrize("name, message", [("typo.nii.gzz", "misspelt"), ("x.gz", "misspelt"),
                                           ("a.tif.bak", "misspelt")])
def test_a_misspelt_file_name_is_refused_not_made_a_dicom_folder(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        output_paths(tmp_path / name, ("mean", "std"))


def test_the_std_file_keeps_the_suffix_as_written():
    assert output_paths("UP.NII.GZ", ("mean", "std")) == {"mean": "UP.NII.GZ", "std": "UP_std.NII.GZ"}
