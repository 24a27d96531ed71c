"""Nothing lost: a real SIGKILL mid-run, resume, and the same output as an uninterrupted run; bad slices
recorded with their error while the others go on; other settings refused, never mixed in silently."""

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from recon.batch import SettingsConflict, run
from recon.cli import app
from recon.demo import example_images, write_native_ct

ARRAYS = ("mean", "std", "initial")
# slow enough per slice (~0.5-1 s here) that a kill lands mid-run
SLOW = {"method": "tv", "options": {"max_iter": 60}}


def _arrays(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in (*ARRAYS, "status", "psnr")}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    images = np.concatenate([example_images(4, 64)[0]] * 2)  # 8 slices
    return write_native_ct(str(folder / "study.h5"), images, n_angles=30)


def _wait_for_shards(process, parts, count: int) -> None:
    """Until the running ``recon batch`` subprocess has finished ``count`` slices (shards in ``parts``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if parts.is_dir() and len(list(parts.glob("0*.npz"))) >= count:
            return
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    pytest.fail(f"the batch run did not finish {count} slice(s) in time")


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path, study):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "recon.cli", "batch", study, "--out", str(out), "--method", "tv",
               "--option", "max_iter=60", "--checkpoint-seconds", "0", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / "study.parts"
    try:
        _wait_for_shards(process, parts, 2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL

    # after the kill: the output file is readable and tells which slices it holds
    finished = len(list(parts.glob("0*.npz")))
    assert 2 <= finished < 8, "the kill should land mid-run"
    with h5py.File(out / "study.h5", "r") as f:
        status = [s.decode() for s in f["status"][()]]
        assert set(status) <= {"done", "pending"} and "pending" in status
        for index in (i for i, s in enumerate(status) if s == "done"):
            assert np.isfinite(f["mean"][index]).all()

    resumed = run([study], out, progress=False, **SLOW)  # the same command again
    assert resumed.ok and resumed.skipped == finished and resumed.done == 8 - finished
    reference = run([study], tmp_path / "uninterrupted", progress=False, **SLOW)
    assert reference.done == 8
    got, want = _arrays(out / "study.h5"), _arrays(tmp_path / "uninterrupted" / "study.h5")
    for name in ARRAYS:
        assert np.array_equal(got[name], want[name]), name
    assert [s.decode() for s in got["status"]] == ["done"] * 8
    assert not (out / "study.parts").exists()


def test_an_output_of_another_version_is_refused_not_mixed(tmp_path, study, monkeypatch):
    """Method defaults change between versions, so slices of two versions never share one output."""
    import recon

    out = tmp_path / "out"
    assert run([study], out, method="fbp", progress=False).ok
    monkeypatch.setattr(recon, "__version__", "99.0.0")
    with pytest.raises(SettingsConflict, match=r"diffrecon version: .* -> '?99\.0\.0"):
        run([study], out, method="fbp", progress=False)


@pytest.mark.parametrize("stamp", ['{"fingerprint": ', "[1, 2]"])
def test_a_damaged_run_stamp_is_named_and_overwrite_starts_again(tmp_path, study, stamp):
    """A cut or foreign ``run.json`` in the work folder stopped the run with a bare JSON error."""
    out = tmp_path / "out"
    (out / "study.parts").mkdir(parents=True)
    (out / "study.parts" / "run.json").write_text(stamp)
    with pytest.raises(SettingsConflict, match=r"study\.parts.run\.json .*--overwrite"):
        run([study], out, method="fbp", progress=False)
    assert run([study], out, method="fbp", progress=False, overwrite=True).ok


def test_other_settings_are_refused_and_overwrite_replaces(tmp_path, study):
    out = tmp_path / "out"
    assert run([study], out, method="fbp", progress=False).ok
    with pytest.raises(SettingsConflict, match=r"different settings \(method: 'fbp' -> 'tv'\).*--overwrite"):
        run([study], out, method="tv", progress=False)
    before = _arrays(out / "study.h5")["mean"]
    # the same settings: nothing to do, nothing changed
    again = run([study], out, method="fbp", progress=False)
    assert again.skipped == 8 and again.done == 0
    np.testing.assert_array_equal(_arrays(out / "study.h5")["mean"], before)
    # execution settings are not part of the identity
    assert run([study], out, method="fbp", threads=2, checkpoint_seconds=5, progress=False).ok
    replaced = run([study], out, method="tv", options={"max_iter": 5}, overwrite=True, progress=False)
    assert replaced.done == 8
    assert not np.array_equal(_arrays(out / "study.h5")["mean"], before)

    result = CliRunner().invoke(app, ["batch", study, "--out", str(out), "--method", "fbp"])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_bad_slices_are_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    images = example_images(4, 32)[0]
    data = write_native_ct(str(tmp_path / "bad.h5"), images, n_angles=20)
    with h5py.File(data, "a") as f:
        f["measurement"][1, 3, 5] = np.nan

    import recon.methods

    original = recon.methods.reconstruct

    def flaky(y, physics, **kwargs):  # the method itself fails on one slice
        if np.allclose(np.asarray(y), np.asarray(measurement_of_slice_2)):
            raise RuntimeError("solver diverged")
        return original(y, physics, **kwargs)

    with h5py.File(data, "r") as f:
        measurement_of_slice_2 = f["measurement"][2][None]
    monkeypatch.setattr(recon.methods, "reconstruct", flaky)
    summary = run([data], tmp_path / "out", method="fbp", progress=False)
    assert summary.done == 2 and summary.failed == 2 and not summary.ok
    errors = {index: error for _, index, error in summary.failures}
    assert "NaN" in errors[1] and "solver diverged" in errors[2]
    arrays = _arrays(tmp_path / "out" / "bad.h5")
    assert [s.decode() for s in arrays["status"]] == ["done", "failed", "failed", "done"]
    assert np.isfinite(arrays["mean"][[0, 3]]).all() and np.isnan(arrays["mean"][1]).all()
    with h5py.File(tmp_path / "out" / "bad.h5", "r") as f:
        assert "solver diverged" in f["error"][2].decode()
    assert "FAILED" in summary.text() and "solver diverged" in (tmp_path / "out" / "recon-batch.log").read_text()

    # a re-run retries only the failed slices (the NaN one fails again, the other now works)
    monkeypatch.setattr(recon.methods, "reconstruct", original)
    again = run([data], tmp_path / "out", method="fbp", progress=False)
    assert again.skipped == 2 and again.done == 1 and again.failed == 1


def test_cli_exits_1_when_a_slice_fails(tmp_path):
    data = write_native_ct(str(tmp_path / "nan.h5"), example_images(2, 32)[0], n_angles=20)
    with h5py.File(data, "a") as f:
        f["measurement"][0, 0, 0] = np.inf
    result = CliRunner().invoke(app, ["batch", data, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 1
    assert "1 slice(s) done, 1 failed" in result.output and "FAILED nan slice 0" in result.output


class _Killed(BaseException):
    """Stands in for a SIGKILL that lands in the middle of a store operation."""


def test_kill_while_removing_finished_shards_does_not_redo_slices(tmp_path, study, monkeypatch):
    from recon.batch import store

    out = tmp_path / "out"
    real_remove = os.remove
    removed = []

    def dying_remove(path):  # removes two files of the finished shards, then "dies"
        real_remove(path)
        if ".trash" in os.fspath(path):
            removed.append(path)
            if len(removed) == 2:
                raise _Killed

    monkeypatch.setattr(store.os, "remove", dying_remove)
    with pytest.raises(_Killed):
        run([study], out, method="fbp", progress=False)
    monkeypatch.setattr(store.os, "remove", real_remove)
    assert (out / "study.parts.trash" / "run.json").exists()  # the stamp goes last: still recognisably ours
    first = _arrays(out / "study.h5")
    assert all(s.decode() == "done" for s in first["status"])

    again = run([study], out, method="fbp", progress=False)
    assert again.done == 0 and again.skipped == 8, "finished slices were computed again"
    assert not (out / "study.parts").exists()
    second = _arrays(out / "study.h5")
    for name in ARRAYS:
        np.testing.assert_array_equal(first[name], second[name])


def test_kill_while_unpacking_a_finished_output_does_not_redo_slices(tmp_path, study, monkeypatch):
    from recon.batch import store

    out = tmp_path / "out"
    run([study], out, method="fbp", progress=False)
    # mark slice 5 failed so that the next run unpacks the finished output to retry it
    with h5py.File(out / "study.h5", "r+") as f:
        f["status"][5] = "failed"
    real_write = store.OutputStore._write_shard
    calls = []

    def dying_write(self, index, arrays, meta):
        calls.append(index)
        if len(calls) == 3:
            raise _Killed
        real_write(self, index, arrays, meta)

    monkeypatch.setattr(store.OutputStore, "_write_shard", dying_write)
    with pytest.raises(_Killed):
        run([study], out, method="fbp", progress=False)
    monkeypatch.setattr(store.OutputStore, "_write_shard", real_write)

    again = run([study], out, method="fbp", progress=False)
    assert again.done == 1 and again.skipped == 7, "only the failed slice should be computed again"


@pytest.mark.parametrize("stopped", ["finished", "killed"])
def test_an_input_replaced_under_its_name_is_refused_not_resumed(tmp_path, monkeypatch, stopped):
    """The fingerprint covers the input's name and slice count, not its contents: another scan saved under
    the same name, with as many slices, resumed into the first scan's output."""
    from recon.batch import store

    images = example_images(3, 32)[0]
    study = write_native_ct(str(tmp_path / "study.h5"), images, n_angles=20)
    out = tmp_path / "out"
    if stopped == "killed":  # a run killed after its first slice: the work folder's stamp holds the record
        real_save, saved = store.OutputStore.save, []

        def dying_save(self, outcome):
            if saved:
                raise _Killed
            saved.append(real_save(self, outcome))

        monkeypatch.setattr(store.OutputStore, "save", dying_save)
        with pytest.raises(_Killed):
            run([study], out, method="fbp", progress=False)
        monkeypatch.setattr(store.OutputStore, "save", real_save)
        assert (out / "study.parts" / "run.json").exists()
    else:
        assert run([study], out, method="fbp", progress=False).done == 3

    # the same bytes written anew under the name (a new inode and time): the same input, it resumes
    shutil.copyfile(study, tmp_path / "copy.h5")
    os.replace(tmp_path / "copy.h5", study)
    assert run([study], out, method="fbp", progress=False, dry_run=True).work[0][4] == (0 if stopped == "finished" else 2)

    size = os.path.getsize(study)
    write_native_ct(study, images[::-1].copy(), n_angles=20)  # another scan: as many slices, the same size
    assert os.path.getsize(study) == size
    before = _arrays(out / "study.h5")["mean"]
    for dry_run in (True, False):
        with pytest.raises(SettingsConflict, match=r"study\.h5 is not the file .* changed since \(the same size, "
                                                   r"other bytes\).*--overwrite"):
            run([study], out, method="fbp", progress=False, dry_run=dry_run)
    np.testing.assert_array_equal(_arrays(out / "study.h5")["mean"], before)  # the output is left as it was
    again = run([study], out, method="fbp", progress=False, overwrite=True)
    assert again.ok and again.done == 3 and again.skipped == 0


def test_outputs_recorded_without_the_inputs_contents_still_resume(tmp_path, small_study):
    """Outputs written before the input's contents were recorded resume as they did, and gain the record."""
    import json

    out = tmp_path / "out"
    assert run([small_study], out, method="fbp", progress=False).done == 2
    with h5py.File(out / "study.h5", "r+") as f:  # as an earlier version wrote it
        metadata = json.loads(f.attrs["metadata"])
        del metadata["input_contents"]
        f.attrs["metadata"] = json.dumps(metadata)
    again = run([small_study], out, method="fbp", progress=False)
    assert again.ok and again.skipped == 2 and again.done == 0
    with h5py.File(out / "study.h5", "r") as f:
        assert json.loads(f.attrs["metadata"])["input_contents"]["bytes"] == os.path.getsize(small_study)


def test_the_record_of_a_large_input_reads_samples_of_it_and_sees_its_last_byte(tmp_path):
    from recon.batch.contents import SAMPLE_BYTES, SAMPLES, input_contents

    path = tmp_path / "large.h5"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * SAMPLES * SAMPLE_BYTES, dtype=np.uint8))
    path.write_bytes(data)
    first = input_contents(path)
    assert first["bytes"] == len(data)
    data[-1] ^= 1
    path.write_bytes(data)
    assert input_contents(path)["sample_sha256"] != first["sample_sha256"]
    data[-1] ^= 1
    data[len(data) // 2 - 1] ^= 1  # a byte between the samples: not seen, as documented
    path.write_bytes(data)
    assert input_contents(path) == first


def test_output_folder_holding_the_input_never_replaces_the_input(tmp_path):
    images = example_images(2, 64)[0]
    study = write_native_ct(str(tmp_path / "study.h5"), images, n_angles=20)
    before = open(study, "rb").read()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="would replace the input"):
            run([study], tmp_path, method="fbp", overwrite=overwrite, progress=False)
        assert open(study, "rb").read() == before


# ------------------------------------------------------------------ what a user left in the output folder
@pytest.fixture
def small_study(tmp_path):
    return write_native_ct(str(tmp_path / "study.h5"), example_images(2, 32)[0], n_angles=20)


@pytest.mark.parametrize("name", [".recon-batch.lock", "recon-batch.log"])
def test_lock_and_log_are_never_written_through_a_symbolic_link(tmp_path, small_study, name):
    """The lock was opened with open(..., "w") through a link (truncating its target), the log appended."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(precious)
    with pytest.raises(ValueError, match=f"{name} exists but is not a regular file"):
        run([small_study], out, method="fbp", progress=False)
    assert precious.read_text() == "keep me"
    assert not (out / "study.h5").exists()


def test_a_fifo_under_the_logs_name_is_refused_not_waited_on(tmp_path, small_study):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "recon-batch.log")
    with pytest.raises(ValueError, match="not a regular file"):
        run([small_study], out, method="fbp", progress=False)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("suffix", [".parts", ".parts.trash", ".parts.unpack"])
def test_a_users_folder_under_a_work_folders_name_is_left_alone(tmp_path, small_study, overwrite, suffix):
    """run.json used to be written into OUT/<name>.parts, and the folder deleted once the output finished."""
    out = tmp_path / "out"
    folder = out / f"study{suffix}"
    folder.mkdir(parents=True)
    (folder / "notes.tmp").write_text("mine")
    result = CliRunner().invoke(app, ["batch", small_study, "--out", str(out), "--method", "fbp"]
                                + (["--overwrite"] if overwrite else []))
    assert result.exit_code == 2, result.output
    assert "was not made by recon batch" in result.output and str(folder) in result.output
    assert sorted(os.listdir(folder)) == ["notes.tmp"] and (folder / "notes.tmp").read_text() == "mine"
    assert not (out / "study.h5").exists()


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kept", ["study", "result"])
def test_a_users_file_under_the_outputs_name_is_left_alone(tmp_path, small_study, overwrite, kept):
    """--overwrite deleted a study (or a recon reconstruct result) that sat at OUT/<name>.h5, though the run
    had just said it was not a batch output."""
    from recon.result import Result

    out = tmp_path / "out"
    out.mkdir()
    if kept == "study":
        shutil.copy(small_study, out / "study.h5")
    else:
        Result(mean=np.zeros((1, 8, 8), np.float32), std=np.zeros((1, 8, 8), np.float32)).save(out / "study.h5")
    before = (out / "study.h5").read_bytes()
    other = tmp_path / "elsewhere" / "study.hdf5"
    other.parent.mkdir()
    shutil.copy(small_study, other)
    result = CliRunner().invoke(app, ["batch", str(other), "--out", str(out), "--method", "fbp"]
                                + (["--overwrite"] if overwrite else []))
    assert result.exit_code == 2, result.output
    assert "is not a recon batch output; it is left alone" in result.output
    assert (out / "study.h5").read_bytes() == before


def test_the_resume_hint_says_overwrite_would_start_again():
    """Rerunning an interrupted --overwrite run as the message said threw its finished slices away."""
    from recon.batch.commands import resume_hint

    assert "run the same command again to resume" in resume_hint(False, None)
    assert "without --overwrite" in resume_hint(True, None) and "same command" not in resume_hint(True, None)
    assert "overwrite = true" in resume_hint(False, "batch.toml")


def test_a_symbolic_link_under_the_work_folders_name_is_refused(tmp_path, small_study):
    target = tmp_path / "elsewhere"
    target.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.parts").symlink_to(target)
    with pytest.raises(ValueError, match="not made by recon batch"):
        run([small_study], out, method="fbp", progress=False)
    assert os.listdir(target) == []


def test_an_output_folder_that_cannot_be_written_exits_2_before_any_work(tmp_path, small_study, monkeypatch):
    """A read-only --out gave a PermissionError traceback and exit 1 ("some slices failed")."""
    from recon.batch import runner

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(runner.os, "makedirs", refuse)
    result = CliRunner().invoke(app, ["batch", small_study, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 2, result.output
    assert "cannot write to --out" in result.output and "Permission denied" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_exits_2(tmp_path, small_study):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = CliRunner().invoke(app, ["batch", small_study, "--out", str(out), "--method", "fbp"])
    finally:
        out.chmod(0o700)
    assert result.exit_code == 2 and "cannot write to --out" in result.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_say_what_was_done_and_how_to_resume(tmp_path, study, signum):
    """Both used to stop the run safely but without a word (and SIGTERM without the last assembly)."""
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "recon.cli", "batch", study, "--out", str(out), "--method", "tv",
               "--option", "max_iter=60", "--no-progress"]
    # a test run started in the background inherits an ignored SIGINT (as a shell's `&` sets it); the
    # user's terminal does not, so the child gets the default disposition back
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_shards(process, out / "study.parts", 1)
        os.kill(process.pid, signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = err.decode()
    assert process.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "slice(s) done" in err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "interrupted" in (out / "recon-batch.log").read_text()
    with h5py.File(out / "study.h5", "r") as f:  # assembled on the way out: the finished slices are in it
        assert "done" in [s.decode() for s in f["status"][()]]


# ------------------------------------------------------------------ flags that do not apply to a file
def _fastmri_file(path, n_slices=2, height=32, width=24, with_mask=True):
    """A small single-coil fastMRI file: with its own /mask, or fully sampled (undersampled by --acceleration)."""
    yy, xx = np.mgrid[:height, :width]
    images = np.stack([np.exp(-((yy - height / 2) ** 2 + (xx - width / 2 - k) ** 2) / 60.0) for k in range(n_slices)])
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    header = ('<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
              f"<encodedSpace><matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize></encodedSpace>"
              "<reconSpace><matrixSize><x>16</x><y>16</y><z>1</z></matrixSize></reconSpace></encoding></ismrmrdHeader>")
    columns = np.zeros(width, dtype=bool)
    columns[::3] = True
    columns[width // 2 - 3:width // 2 + 3] = True
    with h5py.File(path, "w") as f:
        f["kspace"] = (kspace * columns if with_mask else kspace).astype(np.complex64)
        f["ismrmrd_header"] = header.encode()
        if with_mask:
            f["mask"] = columns.astype(np.float32)
    return str(path)


def _fingerprint(path):
    with h5py.File(path, "r") as f:
        return f.attrs["fingerprint"]


@pytest.mark.parametrize("flags", [{"n_angles": 60}, {"n_detectors": 90, "source_distance": 500.0},
                                   {"factor": 2, "operator": "parallel_beam_ct"}, {"format": "fastmri"},
                                   {"acceleration": 8.0, "center_fraction": 0.1, "mask_pattern": "equispaced"}])
def test_flags_that_do_not_apply_to_a_fastmri_file_do_not_block_resume(tmp_path, flags):
    """CT flags on an MRI file, or mask flags on a file with its own mask, compute the same numbers."""
    source = _fastmri_file(tmp_path / "file1.h5")
    out = tmp_path / "out"
    assert run([source], out, method="fbp", progress=False).done == 2
    before = _fingerprint(out / "file1.h5")
    again = run([source], out, method="fbp", progress=False, **flags)
    assert again.ok and again.skipped == 2 and again.done == 0
    assert _fingerprint(out / "file1.h5") == before


def test_mask_flags_still_count_where_they_make_the_mask(tmp_path):
    source = _fastmri_file(tmp_path / "full.h5", with_mask=False)
    out = tmp_path / "out"
    assert run([source], out, method="fbp", acceleration=4.0, progress=False).done == 2
    assert run([source], out, method="fbp", acceleration=4.0, n_angles=60, progress=False).skipped == 2
    with pytest.raises(SettingsConflict, match=r"acceleration: 4\.0 -> 8\.0"):
        run([source], out, method="fbp", acceleration=8.0, n_angles=60, progress=False)


def test_flags_that_do_not_apply_to_a_native_file_do_not_block_resume(tmp_path, small_study):
    out = tmp_path / "out"
    assert run([small_study], out, method="fbp", progress=False).done == 2
    # MRI and super-resolution flags on a CT file; n_angles and operator repeat what the file says
    flags = {"acceleration": 4.0, "mask_pattern": "equispaced", "factor": 2, "n_angles": 20,
             "operator": "parallel_beam_ct", "format": "native"}
    assert run([small_study], out, method="fbp", progress=False, **flags).skipped == 2
    # a flag that changes the numbers still does
    with pytest.raises(SettingsConflict, match=r"different settings \(noise_sigma: None -> 0\.5\)"):
        run([small_study], out, method="fbp", noise_sigma=0.5, progress=False, **flags)


def test_a_native_mri_flag_that_fills_in_the_file_still_counts(tmp_path):
    path = tmp_path / "mri.h5"
    with h5py.File(path, "w") as f:
        f["measurement"] = np.ones((1, 16, 16), dtype=np.complex64)
        f.attrs.update(operator="cartesian_mri", image_size=[16, 16], acceleration=4.0)
    out = tmp_path / "out"
    assert run([str(path)], out, method="fbp", progress=False).done == 1
    assert run([str(path)], out, method="fbp", acceleration=4.0, factor=3, progress=False).skipped == 1
    with pytest.raises(SettingsConflict, match="center_fraction"):  # the file has none: the flag sets the mask
        run([str(path)], out, method="fbp", center_fraction=0.2, progress=False)


def test_outputs_fingerprinted_with_every_flag_still_resume_with_the_same_command(tmp_path, small_study, monkeypatch):
    """Outputs written before flags that do not apply were left out carry the fingerprint of all settings."""
    from recon.batch.settings import BatchSettings

    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # as before: every flag in each file's fingerprint
        patch.setattr(BatchSettings, "for_file", lambda settings, unused=(): settings)
        assert run([small_study], out, method="fbp", acceleration=4.0, progress=False).done == 2
    old = _fingerprint(out / "study.h5")
    again = run([small_study], out, method="fbp", acceleration=4.0, progress=False)
    assert again.skipped == 2 and _fingerprint(out / "study.h5") != old  # re-stamped with the file's own
    assert run([small_study], out, method="fbp", progress=False).skipped == 2


def test_the_operators_warnings_reach_the_batch_log(tmp_path, small_study, monkeypatch):
    """Noise-level rules live in operators.noise; what they warn about belongs in the run's log too."""
    import logging

    import recon.methods.api as api

    pseudo_inverse = api._pseudo_inverse

    def warning_pseudo_inverse(physics, y, noise_sigma):
        logging.getLogger("operators.noise").warning("noise model without a Gaussian sigma (probe)")
        return pseudo_inverse(physics, y, noise_sigma)

    monkeypatch.setattr(api, "_pseudo_inverse", warning_pseudo_inverse)
    summary = run([small_study], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok
    assert "operators.noise: noise model without a Gaussian sigma (probe)" in (tmp_path / "out" / "recon-batch.log").read_text()


def test_only_temporary_files_a_killed_run_left_are_removed_not_a_users_of_a_similar_name(tmp_path, small_study):
    """study.h5.2024.tmp (digits) and study.h5.deadbeef.tmp (a text file) were deleted as stale temporaries."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.h5.2024.tmp").write_text("mine")
    (out / "study.h5.deadbeef.tmp").write_text("mine too")
    (out / "study.h5.0badcafe.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # a killed write of ours
    (out / "study.h5.12345678.tmp").write_bytes(b"")  # killed before its first byte
    summary = run([small_study], str(out), method="fbp", progress=False)
    assert summary.ok, summary.failures
    assert (out / "study.h5.2024.tmp").read_text() == "mine" and (out / "study.h5.deadbeef.tmp").read_text() == "mine too"
    assert not (out / "study.h5.0badcafe.tmp").exists() and not (out / "study.h5.12345678.tmp").exists()
