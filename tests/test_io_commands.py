"""``recon simulate`` and ``recon export``: a DICOM series to a study, a batch run and a NIfTI export."""

import nibabel
import numpy as np
from conftest import write_dicom_slices
from typer.testing import CliRunner

from recon.cli import app


def _series(folder):
    hu = np.full((2, 32, 32), -1000.0)
    hu[:, 8:24, 8:24] = 60.0
    write_dicom_slices(folder, hu)
    return hu


def test_from_a_dicom_series_to_a_nifti_export_in_three_commands(tmp_path, monkeypatch):
    _series(tmp_path / "series")
    runner = CliRunner()
    study, runs, nifti = tmp_path / "study.h5", tmp_path / "runs", tmp_path / "fbp.nii.gz"
    run = runner.invoke(app, ["simulate", "ct", str(tmp_path / "series"), "--out", str(study), "--n-angles", "40",
                              "--noise", "0"])
    assert run.exit_code == 0 and "2 slice(s)" in run.output, run.output
    run = runner.invoke(app, ["batch", str(study), "--out", str(runs), "--method", "fbp", "--no-progress"])
    assert run.exit_code == 0, run.output
    run = runner.invoke(app, ["export", str(runs / "study.h5"), "--out", str(nifti), "--array", "mean"])
    assert run.exit_code == 0 and str(nifti) in run.output, run.output
    mean_hu = np.transpose(nibabel.load(nifti).get_fdata(), (2, 1, 0))
    assert mean_hu.shape == (2, 32, 32) and abs(np.median(mean_hu[:, 12:20, 12:20]) - 60) < 60
    second = tmp_path / "second.nii.gz"  # OUT as a second argument, as scripts wrote it before --out
    run = runner.invoke(app, ["export", str(runs / "study.h5"), str(second), "--array", "mean"])
    assert run.exit_code == 0, run.output
    np.testing.assert_array_equal(nibabel.load(second).get_fdata(), nibabel.load(nifti).get_fdata())
    monkeypatch.chdir(tmp_path)  # an empty --out was typer's Path("."): DICOM series in the working folder
    run = runner.invoke(app, ["export", str(runs / "study.h5"), "--out", ""])
    assert run.exit_code == 2 and "output name is empty" in run.output, run.output
    assert not (tmp_path / "mean").exists() and not (tmp_path / "std").exists()


def test_export_takes_its_output_once(tmp_path):
    runner = CliRunner()
    run = runner.invoke(app, ["export", str(tmp_path / "r.h5")])
    assert run.exit_code == 2 and "--out OUT" in run.output, run.output
    for extra in (["a.nii", "--out", "b.nii"], ["a.nii", "b.nii"]):
        run = runner.invoke(app, ["export", str(tmp_path / "r.h5"), *extra])
        assert run.exit_code == 2 and "once" in run.output, run.output
    assert not any(tmp_path.iterdir())


def test_simulate_takes_the_documented_flags_and_their_old_spellings(tmp_path):
    import h5py

    _series(tmp_path / "series")
    for name, flags in (("new", ["--out", "{}", "--n-angles", "24"]), ("old", ["--output", "{}", "--angles", "24"])):
        study = tmp_path / f"{name}.h5"
        run = CliRunner().invoke(app, ["simulate", "ct", str(tmp_path / "series"), "--noise", "0", "-q",
                                       *[flag.format(study) for flag in flags]])
        assert run.exit_code == 0, run.output
        with h5py.File(study, "r") as f:
            assert f["measurement"].shape[:2] == (2, 24)
    with h5py.File(tmp_path / "new.h5", "r") as new, h5py.File(tmp_path / "old.h5", "r") as old:
        np.testing.assert_array_equal(new["measurement"][()], old["measurement"][()])


def test_export_refuses_an_array_that_is_not_mean_or_std(tmp_path):
    run = CliRunner().invoke(app, ["export", str(tmp_path / "r.h5"), "--out", str(tmp_path / "x.nii"), "--array", "samples"])
    assert run.exit_code == 2 and "mean" in run.output and "std" in run.output, run.output


def test_simulate_never_replaces_a_study_without_overwrite(tmp_path):
    _series(tmp_path / "series")
    study = tmp_path / "study.h5"
    study.write_bytes(b"earlier work")
    run = CliRunner().invoke(app, ["simulate", "ct", str(tmp_path / "series"), "--out", str(study)])
    assert run.exit_code == 2 and "--overwrite" in run.output, run.output
    assert study.read_bytes() == b"earlier work"
    run = CliRunner().invoke(app, ["simulate", "ct", str(tmp_path / "series"), "--out", str(study), "--overwrite"])
    assert run.exit_code == 0, run.output
    assert study.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_a_study_that_appears_during_simulate_is_kept_and_the_exit_is_2(tmp_path, monkeypatch):
    import recon.files

    _series(tmp_path / "series")
    study = tmp_path / "study.h5"
    made = recon.files.fresh_temp

    def appearing(path):  # someone writes the study while the simulation runs
        study.write_bytes(b"their study")
        return made(path)

    monkeypatch.setattr(recon.files, "fresh_temp", appearing)
    run = CliRunner().invoke(app, ["simulate", "ct", str(tmp_path / "series"), "--out", str(study)])
    assert run.exit_code == 2 and "appeared while the study was simulated; not replaced" in run.output, run.output
    assert study.read_bytes() == b"their study" and sorted(p.name for p in tmp_path.iterdir()) == ["series", "study.h5"]


def test_bad_inputs_exit_2_with_the_reason(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((16, 16)))
    runner = CliRunner()
    run = runner.invoke(app, ["simulate", "mri", str(tmp_path / "img.npy"), "--out", str(tmp_path / "s.h5"),
                              "--dose", "1e4"])
    assert run.exit_code == 2 and "--dose" in run.output
    run = runner.invoke(app, ["simulate", "ct", str(tmp_path / "nothing.dcm"), "--out", str(tmp_path / "s.h5")])
    assert run.exit_code == 2 and "nothing.dcm does not exist" in run.output
    run = runner.invoke(app, ["export", str(tmp_path / "img.npy"), "--out", str(tmp_path / "x.nii")])
    assert run.exit_code == 2 and "img.npy is not a readable" in run.output
    run = runner.invoke(app, ["export", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x.nii")])
    assert run.exit_code == 2 and "does not exist" in run.output
