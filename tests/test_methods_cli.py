"""``recon reconstruct``: a measurement file in, a result file out that reopens with its metadata."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recon.cli import app
from recon.result import load_result


@pytest.fixture(scope="module")
def sinogram(tmp_path_factory):
    import operators

    physics = operators.ParallelBeamCT(image_size=32, n_angles=20)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.7
    path = tmp_path_factory.mktemp("cli") / "sino.npy"
    np.save(path, physics.A(x)[0].numpy())
    return path, x[0].numpy(), physics


def test_reconstruct_command_writes_a_result_that_matches_the_api(sinogram, tmp_path):
    from recon import reconstruct

    path, _, physics = sinogram
    out = tmp_path / "tv.h5"
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--operator", "ct", "--size", "32",
                                   "--angles", "20", "--method", "tv"])
    assert run.exit_code == 0, run.output
    result = load_result(out)
    assert result.metadata["method"] == "tv" and result.metadata["operator"] == "ParallelBeamCT"
    direct = reconstruct(np.load(path), physics, method="tv")
    np.testing.assert_allclose(result.mean, direct.mean, atol=1e-5)


def test_reconstruct_command_rejects_a_wrong_angle_count(sinogram, tmp_path):
    path, _, _ = sinogram
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32", "--angles", "30"])
    assert run.exit_code != 0
    assert "angles" in run.output
    assert not (tmp_path / "x.h5").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("the reconstruction ran although the command line was bad")


@pytest.mark.parametrize("extra, match", [
    (["--t0", "abc"], "--t0"),
    (["--device", "gpu"], "device"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--noise-sigma", "nan"], "noise-sigma"),
    (["--steps", "1000000000000"], "steps"),
])
def test_bad_flags_exit_2_with_a_message_not_a_traceback(sinogram, tmp_path, extra, match):
    path, _, _ = sinogram
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32",
                                   "--angles", "20", "--method", "fbp"] + extra)
    assert run.exit_code == 2, run.output
    assert match in run.output and "Traceback" not in run.output
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("where", ["existing", "folder", "missing-folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(sinogram, tmp_path, monkeypatch, where):
    """`-o existing.h5` used to run the whole reconstruction and then fail with a traceback."""
    import recon.methods

    path, _, _ = sinogram
    out = {"existing": tmp_path / "old.h5", "folder": tmp_path, "missing-folder": tmp_path / "nowhere" / "x.h5"}[where]
    if where == "existing":
        out.write_bytes(b"a user's file")
    monkeypatch.setattr(recon.methods, "reconstruct", _must_not_run)
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--size", "32", "--angles", "20"])
    assert run.exit_code == 2, run.output
    assert "--output" in run.output or "-o" in run.output
    if where == "existing":
        assert out.read_bytes() == b"a user's file"


@pytest.mark.parametrize("spec", ["file", "dataset", "link"])
def test_the_measurement_file_is_never_the_output_even_with_overwrite(tmp_path, monkeypatch, spec):
    """`recon reconstruct scan.h5:/y --out scan.h5 --overwrite` replaced the scan with the result."""
    import h5py

    import recon.methods

    scan = tmp_path / "scan.h5"
    with h5py.File(scan, "w") as f:
        f["y"] = np.zeros((20, 46), dtype=np.float32)
    before = scan.read_bytes()
    target = scan
    if spec == "link":
        target = tmp_path / "result.h5"
        target.symlink_to(scan)
    monkeypatch.setattr(recon.methods, "reconstruct", _must_not_run)
    source = f"{scan}:/y" if spec == "dataset" else str(scan)
    run = CliRunner().invoke(app, ["reconstruct", source, "-o", str(target), "--overwrite", "--size", "32"])
    message = " ".join(run.output.replace("│", " ").split())  # the error box wraps lines
    assert run.exit_code == 2 and "is the input" in message, run.output
    assert scan.read_bytes() == before


@pytest.mark.parametrize("content", [b"not an array", b"\x93NUMPY garbage"])
def test_an_unreadable_measurement_exits_2(tmp_path, content):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(content)
    run = CliRunner().invoke(app, ["reconstruct", str(bad), "-o", str(tmp_path / "x.h5"), "--size", "32"])
    assert run.exit_code == 2 and "cannot read" in run.output, run.output


def test_an_unexpected_error_prints_one_line_and_the_traceback_only_with_v(sinogram, tmp_path, monkeypatch, capsys):
    import sys

    from recon import cli
    from recon.result import Result

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Result, "save", full_disk)
    path, _, _ = sinogram
    argv = ["recon", "reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32", "--angles", "20",
            "--method", "fbp"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: OSError" in err and "No space left" in err and "-v" in err and "Traceback" not in err
    monkeypatch.setattr(sys, "argv", argv[:1] + ["-v"] + argv[1:])
    with pytest.raises(OSError, match="No space left"):
        cli.main()
    monkeypatch.setattr(sys, "argv", argv + ["-v"])  # after the command, where it is usually typed
    with pytest.raises(OSError, match="No space left"):
        cli.main()


@pytest.mark.parametrize("spelling", [["--out", "{out}", "--n-angles", "20"], ["--output", "{out}", "--angles", "20"],
                                      ["--output={out}", "--angles=20"], ["-o", "{out}", "--n-angles=20"]])
def test_the_documented_flags_and_their_old_spellings_give_the_same_result(sinogram, tmp_path, spelling):
    path, _, physics = sinogram
    out = tmp_path / "fbp.h5"
    flags = [flag.format(out=out) for flag in spelling]
    run = CliRunner().invoke(app, ["reconstruct", str(path), *flags, "--size", "32", "--method", "fbp"])
    assert run.exit_code == 0, run.output
    meta = load_result(out).metadata
    assert meta["method"] == "fbp" and meta["operator_description"]["n_angles"] == 20


def test_a_plain_2d_sinogram_and_an_angles_file_in_degrees(sinogram, tmp_path):
    import operators
    from recon import reconstruct

    path, x, physics = sinogram
    plain = tmp_path / "plain.npy"
    np.save(plain, np.load(path)[0])  # (angles, detectors): what a user's own scanner export looks like
    degrees = np.linspace(0, 180, 20, endpoint=False)
    (tmp_path / "angles.txt").write_text("\n".join(f"{a:.6f}" for a in degrees))
    out = tmp_path / "fbp.h5"
    run = CliRunner().invoke(app, ["reconstruct", str(plain), "--out", str(out), "--size", "32", "--method", "fbp",
                                   "--angles-file", str(tmp_path / "angles.txt"), "--degrees"])
    assert run.exit_code == 0, run.output
    same = operators.ParallelBeamCT(32, angles=np.deg2rad(degrees), n_detectors=physics.n_detectors)
    np.testing.assert_allclose(load_result(out).mean, reconstruct(np.load(path), same, method="fbp").mean, atol=1e-5)


def test_complex_kspace_in_an_h5_dataset_uses_the_mri_prior_and_its_measured_columns(tmp_path, monkeypatch):
    """`--operator mri` used to reconstruct with the CT prior unless --prior was given."""
    import h5py

    import recon.methods

    image = np.zeros((32, 32), np.float32)
    image[8:24, 10:20] = 1.0
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    kspace[:, ::3] = 0  # two columns in three measured
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("data/kspace", data=kspace.astype(np.complex64))
    seen = {}
    real = recon.methods.reconstruct

    def record(y, physics, **kwargs):
        seen.update(kwargs, physics=physics)
        return real(y, physics, method="fbp")

    monkeypatch.setattr(recon.methods, "reconstruct", record)
    run = CliRunner().invoke(app, ["reconstruct", f"{tmp_path / 'scan.h5'}:/data/kspace", "-o", str(tmp_path / "r.h5"),
                                   "--operator", "mri"])
    assert run.exit_code == 0, run.output
    assert seen["prior"] == "mri"
    assert (seen["physics"].mask.numpy().max(axis=0) > 0).tolist() == [i % 3 != 0 for i in range(32)]
    import operators

    columns = np.array([i % 3 != 0 for i in range(32)], np.float32)
    direct = real(np.stack([kspace.real, kspace.imag]).astype(np.float32), operators.CartesianMRI(32, mask=columns),
                  method="fbp")
    np.testing.assert_allclose(load_result(tmp_path / "r.h5").mean, direct.mean, atol=1e-6)


@pytest.mark.parametrize("extra, match", [
    (["--acceleration", "4"], "--acceleration"),
    (["--operator", "sr", "--size", "32"], "--size"),
    (["--n-detectors", "50"], "50"),
    (["--operator", "fan"], "source_distance"),
    (["--adapt", "on"], "--adapt"),  # fbp has no prior to adapt: the flag was ignored without a word
    (["--prior", "ct"], "uses no prior"),  # was ignored without a word too
    (["--operator", "sr", "--factor", "-4"], "--factor"),  # was an image size of (-80, -184)
    (["--size", "100000"], "pixels"),  # passed the side's bound, then asked for 37 GiB
])
def test_flags_that_do_not_fit_the_operator_or_the_data_exit_2_before_the_work(sinogram, tmp_path, monkeypatch,
                                                                               extra, match):
    import recon.methods

    path, _, _ = sinogram
    monkeypatch.setattr(recon.methods, "reconstruct", _must_not_run)
    args = ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--method", "fbp"]
    args += extra if "--size" in extra or "sr" in extra else ["--size", "32"] + extra
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert match in run.output and "Traceback" not in run.output


def test_a_result_named_as_another_format_is_refused(sinogram, tmp_path):
    """`--out res.npy` wrote HDF5 under a NumPy name."""
    path, _, _ = sinogram
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "res.npy"), "--size", "32",
                                   "--n-angles", "20", "--method", "fbp"])
    assert run.exit_code == 2 and "recon export" in " ".join(run.output.replace("│", " ").split()), run.output
    assert not (tmp_path / "res.npy").exists()


def test_a_missing_prior_checkpoint_exits_2(sinogram, tmp_path):
    path, _, _ = sinogram
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32",
                                   "--n-angles", "20", "--prior", str(tmp_path / "none.pt")])
    assert run.exit_code == 2 and "does not exist" in " ".join(run.output.replace("│", " ").split()), run.output
    assert not (tmp_path / "x.h5").exists()


def test_a_mask_that_measures_nothing_exits_2(tmp_path, monkeypatch):
    import recon.methods

    monkeypatch.setattr(recon.methods, "reconstruct", _must_not_run)
    kspace = np.fft.fft2(np.random.default_rng(0).uniform(size=(16, 16))).astype(np.complex64)
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "mask.npy", np.zeros(16, np.float32))
    run = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "k.npy"), "-o", str(tmp_path / "x.h5"),
                                   "--operator", "mri", "--mask", str(tmp_path / "mask.npy"), "--method", "fbp"])
    assert run.exit_code == 2 and "nothing to reconstruct from" in " ".join(run.output.replace("│", " ").split()), run.output


def test_method_options_reach_reconstruct(sinogram, tmp_path):
    from recon import reconstruct

    path, _, physics = sinogram
    out = tmp_path / "tv.h5"
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--size", "32", "--n-angles", "20",
                                   "--method", "tv", "--option", "max_iter=7", "--lambda-tv", "0.05"])
    assert run.exit_code == 0, run.output
    direct = reconstruct(np.load(path), physics, method="tv", max_iter=7, lambda_tv=0.05)
    default = reconstruct(np.load(path), physics, method="tv")
    np.testing.assert_allclose(load_result(out).mean, direct.mean, atol=1e-6)
    assert not np.allclose(direct.mean, default.mean, atol=1e-4)  # the options changed the result


@pytest.mark.parametrize("extra, match", [
    (["--option", "colour=3"], "colour"),  # unknown: the message lists what tv accepts
    (["--option", "max_iter"], "KEY=VALUE"),
    (["--option", "max_iter=3", "--option", "max_iter=4"], "twice"),  # not: the last one silently wins
    (["--option", "max_iter=-3"], "max_iter"),
    (["--option", "t0=0.3"], "--t0"),  # a flag's own value: one way to set it
    (["--option", "n_samples=2"], "--samples"),
    (["--option", "neighbours=[1]"], "not available"),
    (["--option", "init={}"], "init"),
    (["--lambda-tv", "abc"], "--lambda-tv"),
    (["--lambda-tv", "-1"], "--lambda-tv"),
    (["--t0", "0.5"], "--t0"),  # tv takes no t0: the flag is named, not --option
    (["--steps", "5"], "--steps"),
])
def test_bad_method_options_exit_2_before_the_work(sinogram, tmp_path, monkeypatch, extra, match):
    import recon.methods

    path, _, _ = sinogram
    monkeypatch.setattr(recon.methods, "reconstruct", _must_not_run)
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32",
                                   "--method", "tv", *extra])
    assert run.exit_code == 2, run.output
    assert match in run.output and "Traceback" not in run.output


def test_self_validation_flags(sinogram, tmp_path):
    path, _, _ = sinogram
    out = tmp_path / "tv.h5"
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--size", "32", "--n-angles", "20",
                                   "--method", "tv", "--lambda-tv", "auto"])
    assert run.exit_code == 0, run.output
    assert "held-out data" not in run.output or "relative RMS" in run.output
    assert load_result(out).metadata["self_validation"]["chosen"] == load_result(out).metadata["parameters"]["lambda_tv"]
    bad = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32",
                                   "--adapt", "maybe"])
    assert bad.exit_code == 2 and "maybe" in bad.output


def test_an_output_that_appears_during_the_work_is_kept_and_the_result_saved_beside_it(sinogram, tmp_path,
                                                                                        monkeypatch):
    """The finished reconstruction was thrown away (FileExistsError at the end, after hours with a prior)."""
    import recon.methods

    path, _, _ = sinogram
    out = tmp_path / "r.h5"
    reconstruct = recon.methods.reconstruct

    def reconstruct_while_someone_writes(*args, **kwargs):
        out.write_text("someone else's file")
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(recon.methods, "reconstruct", reconstruct_while_someone_writes)
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--size", "32", "--method", "fbp"])
    assert run.exit_code == 0, run.output
    assert out.read_text() == "someone else's file"
    assert "appeared while reconstructing" in run.output and load_result(tmp_path / "r-1.h5").metadata["method"] == "fbp"


def test_a_result_never_replaces_a_file_that_appears_while_it_is_written(tmp_path, monkeypatch):
    """The existence check came before the write, the rename after it: a file made in between was replaced."""
    import h5py

    from recon.result import Result

    target = tmp_path / "r.h5"
    original = h5py.File

    def file_then_newcomer(name, mode="r", *args, **kwargs):
        if mode == "w":
            target.write_text("newcomer")
        return original(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", file_then_newcomer)
    with pytest.raises(FileExistsError, match="r.h5 appeared while it was written; not replaced"):
        Result(mean=np.zeros((1, 4, 4), np.float32), std=np.zeros((1, 4, 4), np.float32)).save(target)
    assert target.read_text() == "newcomer" and [p.name for p in tmp_path.iterdir()] == ["r.h5"]
