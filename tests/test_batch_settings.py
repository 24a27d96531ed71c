"""Batch settings: TOML + flags, validated before any work, errors that name the key; --dry-run."""

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from recon.batch import SettingsConflict, run
from recon.batch.settings import BatchSettings, resolve, validate
from recon.cli import app
from recon.demo import example_images, write_native_ct


@pytest.fixture
def study(tmp_path):
    return write_native_ct(str(tmp_path / "study.h5"), example_images(2, 32)[0], n_angles=20)


def test_unknown_toml_key_is_named_with_its_file_and_a_suggestion(tmp_path, study):
    config = tmp_path / "bad.toml"
    config.write_text('method = "fbp"\nstepz = 10\n')
    with pytest.raises(ValueError, match=r"unknown setting 'stepz' \(from .*bad.toml\); did you mean 'steps'"):
        run([study], tmp_path / "out", config=str(config))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, message", [
    ("steps", 0, "'steps'.*integer >= 1"),
    ("steps", "ten", "'steps'.*integer >= 1"),
    ("steps", 10**12, "'steps'.*<= 100000"),  # used to try to allocate 8 TB once the first slice started
    ("samples", 10**9, "'samples'.*<= 100000"),
    ("noise_sigma", float("inf"), "'noise_sigma'"),  # used to pass here and fail every slice
    ("source_distance", float("inf"), "'source_distance'"),
    ("acceleration", float("inf"), "'acceleration'"),
    ("method", "magic", "'method'.*one of"),
    ("t0", 1.5, "'t0'"),
    ("center_fraction", 1.2, "'center_fraction'"),
    ("save_samples", "yes", "'save_samples'.*true or false"),
    ("options", 3, "'options'"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        validate({key: value})


def test_workers_and_scheduler_exclude_each_other(tmp_path, study):
    with pytest.raises(ValueError, match="'workers' and 'scheduler'"):
        run([study], tmp_path / "out", workers=2, scheduler="tcp://127.0.0.1:8786")


def test_flags_override_toml_and_options_merge(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('method = "diffusion"\nsteps = 7\nseed = 3\n[options]\nzeta = 0.5\nsigma_end = 0.01\n')
    settings = resolve(str(config), method="ccdf", seed=None, options={"zeta": 0.9})
    assert isinstance(settings, BatchSettings)
    assert settings.method == "ccdf" and settings.steps == 7 and settings.seed == 3
    assert settings.options == {"zeta": 0.9, "sigma_end": 0.01}
    # the fingerprint ignores how a run is executed, not what it computes (of a file of one slice)
    settings = settings.for_volume(1)
    assert replace(settings, workers=4).fingerprint() == settings.fingerprint()
    assert replace(settings, steps=8).fingerprint() != settings.fingerprint()


def test_invalid_toml_syntax_names_the_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("method = \n")
    with pytest.raises(ValueError, match="broken.toml.*not valid TOML"):
        resolve(str(config))


def test_a_settings_file_that_is_a_folder_or_not_text_is_named(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        resolve(str(tmp_path))
    binary = tmp_path / "study.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\x00\xff")
    with pytest.raises(ValueError, match="study.h5.*not a text"):
        resolve(str(binary))


def test_a_prior_for_a_method_without_one_is_refused():
    with pytest.raises(ValueError, match="'tv' uses no prior"):
        resolve(None, method="tv", prior="ct")


def test_invalid_toml_value_names_the_key(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text('method = "tv"\nsteps = 20\nseed = zero\n')
    with pytest.raises(ValueError, match=r"broken.toml.*not valid TOML.*line 3.*seed = zero"):
        resolve(str(config))


@pytest.mark.parametrize("toml, message", [
    ('method = "tv"\n[options]\nlambda_tvv = 0.01\n', r"'options.lambda_tvv'.*did you mean 'options.lambda_tv'"),
    ('method = "ccdf"\n[options]\nzeta = 2.0\n', r"bad setting in 'options'.*zeta"),  # a value ccdf would refuse
    ('method = "tv"\n[options]\nreport_every = 0\n', r"bad setting in 'options'.*report_every"),  # used to hang
    ('method = "tv"\n[options]\nlambda_tv = nan\n', r"bad setting in 'options'.*lambda_tv"),
    ('method = "ccdf"\n[options]\nt0_margin = 0\n', r"bad setting in 'options'.*t0_margin"),
])
def test_bad_method_option_is_refused_before_any_work(tmp_path, study, toml, message):
    """A wrong option name or value fails once, up front, not on every slice."""
    config = tmp_path / "run.toml"
    config.write_text(toml)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run([study], out, config=str(config), progress=False)
    assert not out.exists()


def test_the_options_of_the_method_the_flags_pick_are_the_ones_checked(tmp_path, study):
    other = tmp_path / "other.toml"
    other.write_text('method = "ccdf"\n[options]\nmax_iter = 3\n')
    summary = run([study], tmp_path / "out", config=str(other), method="tv", progress=False)
    assert summary.ok and summary.done > 0


def test_cli_dry_run_prints_settings_and_work_list_and_writes_nothing(tmp_path, study):
    result = CliRunner().invoke(app, ["batch", study, "--out", str(tmp_path / "out"), "--method", "ccdf",
                                      "--steps", "5", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'method = "ccdf"' in result.output and "steps = 5" in result.output
    assert "study.h5 (native, 2 slices, steering off)" in result.output and "2 to do, 0 done" in result.output
    assert "adapt = null  # unset: \"auto\" for ccdf over files of 16 slices or more" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_bad_flag_value_exits_2_with_the_key(tmp_path, study):
    result = CliRunner().invoke(app, ["batch", study, "--out", str(tmp_path / "out"), "--samples", "0"])
    assert result.exit_code == 2
    assert "'samples'" in result.output


@pytest.mark.parametrize("pairs, message", [
    (["--option", "max_iter=3", "--option", "max_iter=4"], "given twice"),  # the last one silently won
    (["--option", "max_iter"], "KEY=VALUE"),
])
def test_cli_bad_option_pairs_exit_2_before_any_work(tmp_path, study, pairs, message):
    result = CliRunner().invoke(app, ["batch", study, "--out", str(tmp_path / "out"), "--method", "tv", *pairs])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_example_config_file_is_valid(tmp_path):
    import pathlib

    example = pathlib.Path(__file__).parents[1] / "examples" / "batch_example.toml"
    settings = resolve(str(example))
    assert settings.method in ("ccdf", "fbp", "tv", "diffusion", "genreg")


def test_resolved_settings_are_stored_in_the_output(tmp_path, study):
    config = tmp_path / "run.toml"
    config.write_text('method = "fbp"\nseed = 11\n')
    assert run([study], tmp_path / "out", config=str(config), progress=False).ok
    with h5py.File(tmp_path / "out" / "study.h5", "r") as f:
        stored = json.loads(f.attrs["settings"])
    assert stored["seed"] == 11 and stored["method"] == "fbp"


@pytest.fixture
def mri_study(tmp_path):
    """A native MRI file that declares its own mask pattern (no /mask: the mask is built from attributes)."""
    path = tmp_path / "mri.h5"
    with h5py.File(path, "w") as f:
        f["measurement"] = np.ones((1, 16, 16), dtype=np.complex64)
        f.attrs.update(operator="cartesian_mri", image_size=[16, 16], acceleration=4.0, mask_pattern="equispaced")
    return str(path)


@pytest.mark.parametrize("given", ["random", "variable-density", "equispaced"])
def test_explicit_mask_pattern_overrides_the_files_own(tmp_path, mri_study, given):
    from recon.batch.formats import open_input

    assert open_input(mri_study, resolve()).physics["pattern"] == "equispaced"  # unset: the file's value
    assert open_input(mri_study, resolve(mask_pattern=given)).physics["pattern"] == given
    config = tmp_path / "run.toml"
    config.write_text(f'mask_pattern = "{given}"\n')
    assert open_input(mri_study, resolve(str(config))).physics["pattern"] == given


def test_mask_settings_for_a_file_with_its_own_mask_are_named_as_ignored(tmp_path, caplog):
    import logging

    from recon.batch.formats import open_input

    path = tmp_path / "masked.h5"
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[:, ::4] = 1
    with h5py.File(path, "w") as f:
        f["measurement"] = np.ones((1, 16, 16), dtype=np.complex64)
        f["mask"] = mask
        f.attrs.update(operator="cartesian_mri", image_size=[16, 16])
    with caplog.at_level(logging.WARNING, logger="recon.batch.native"):
        source = open_input(str(path), resolve(mask_pattern="random"))
    assert "mask" in source.physics and "ignoring {'mask_pattern': 'random'}" in caplog.text


def test_unset_mask_pattern_keeps_the_fingerprint_of_the_old_default(tmp_path, mri_study):
    settings = resolve().for_volume(1)
    assert settings.mask_pattern is None
    assert settings.fingerprint() == replace(settings, mask_pattern="random").fingerprint()  # earlier outputs resume
    # but an explicit pattern that replaces the file's own computes other numbers: never mixed on resume
    run([mri_study], tmp_path / "out", method="fbp", progress=False)
    with pytest.raises(SettingsConflict):
        run([mri_study], tmp_path / "out", method="fbp", mask_pattern="random", progress=False)


@pytest.mark.parametrize("device", ["cuda:7", "gpu"])
def test_a_device_that_is_not_here_exits_2_before_any_slice(tmp_path, study, device):
    """--device cuda:1 without that GPU used to fail every slice (exit 1) instead of the run (exit 2)."""
    result = CliRunner().invoke(app, ["batch", study, "--out", str(tmp_path / "out"), "--method", "fbp",
                                      "--device", device])
    assert result.exit_code == 2, result.output
    assert "'device'" in result.output
    assert not (tmp_path / "out").exists()


def test_fingerprints_are_those_0_7_0_wrote():
    """The typed settings hash exactly as 0.7.0's dictionary did: the record changed no fingerprint."""
    # each slice its own self-validation, as in 0.7.0 (the default since 0.9.0 is one per volume);
    # unset steering is off for a file of 8 slices, as it always was before 0.24.0
    def short(settings):
        return validate(settings).for_volume(8)

    assert short({"self_validation": "slice"}).fingerprint() == \
        "dd72b7fea6a29f678082ebeb977d64ea9fe8ca1039503ec836862aa2a44ce8eb"
    assert short({}).fingerprint() != short({"self_validation": "slice"}).fingerprint()
    assert short({"method": "tv"}).fingerprint() == short({"method": "tv", "self_validation": "slice"}).fingerprint()
    settings = short({"method": "tv", "options": {"lambda_tv": 0.01}, "operator": "parallel_beam_ct",
                      "n_angles": 30, "workers": 2})
    assert settings.fingerprint({"version": "0.7.0"}) == \
        "19ba1f09866e4d340a3392f0d21433d4d0e8ef3fabcfa8c0a54a682a28a5857b"


def test_settings_are_frozen_and_survive_pickling():
    import pickle
    from dataclasses import FrozenInstanceError

    settings = resolve(method="fbp", options={})
    with pytest.raises(FrozenInstanceError):
        settings.method = "tv"
    assert pickle.loads(pickle.dumps(settings)) == settings  # Dask ships them to its workers
    placed = replace(settings, format="native", n_angles=30, acceleration=4.0)
    for_one_file = placed.for_file({"n_angles"})
    assert (for_one_file.format, for_one_file.n_angles, for_one_file.acceleration) == ("auto", None, 4.0)


def test_unset_adapt_steers_ccdf_over_long_volumes_only():
    """Steering once per volume costs ~10 slices' worth of training: the default turns it on where a
    volume is long enough to keep the run within 2x, and leaves it off elsewhere."""
    from recon.methods.volume import AUTO_ADAPT_SLICES, VOLUME_ADAPT

    assert VOLUME_ADAPT == "auto"  # kept where held-out data say the adapters help

    settings = validate({})
    assert settings.adapt is None
    with pytest.raises(ValueError, match="for_volume"):  # an output's fingerprint needs the file's steering
        settings.fingerprint()
    assert settings.for_volume(AUTO_ADAPT_SLICES).adapt == "auto"
    assert settings.for_volume(AUTO_ADAPT_SLICES - 1).adapt == "off"
    long = AUTO_ADAPT_SLICES * 2
    for unsteered in ({"method": "diffusion"}, {"method": "tv"}, {"samples": 4}, {"self_validation": "slice"}):
        assert validate(unsteered).for_volume(long).adapt == "off", unsteered
    for explicit in ("off", "on", {"mode": "auto", "train_steps": 50}):  # a user's setting is kept as given
        assert validate({"adapt": explicit}).for_volume(long).adapt == explicit
        assert validate({"adapt": explicit}).for_volume(1).adapt == explicit
    # a long file's default computes other numbers than a short file's, and the same as an explicit "auto"
    assert settings.for_volume(long).fingerprint() == validate({"adapt": "auto"}).fingerprint()
    assert settings.for_volume(long).fingerprint() != settings.for_volume(1).fingerprint()
