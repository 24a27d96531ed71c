"""One self-validation per volume: made once on the middle slice, shared by every slice, kept for resume."""

import h5py
import numpy as np
import pytest

import recon.methods
from recon.batch import run
from recon.demo import example_images, write_native_ct
from recon.methods import selfvalidation

SETTINGS = dict(method="ccdf", samples=2, steps=3, t0=0.4, progress=False)
#: Self-validations of the study's reference slice: its own and its two neighbours' (the volume's other
#: slices calibrate the std and, where steering is on, train the adapters: ``runner.training_slices``)
REFERENCE = 3
#: steering always on, with a short training: what is tested is how the adapters travel
QUICK_ADAPT = {"mode": "on", "train_steps": 8, "batch": 2}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volume")
    return write_native_ct(str(folder / "vol.h5"), example_images(3, 32)[0], n_angles=20, seed=1)


@pytest.fixture
def choices_made(monkeypatch):
    """Counts self-validations (the real ones still run)."""
    made = []
    original = selfvalidation.choose

    def counting(**kwargs):
        made.append(1)
        return (yield from original(**kwargs))

    monkeypatch.setattr(selfvalidation, "choose", counting)
    return made


def _read(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("mean", "std", "status")}, dict(f.attrs)


def test_one_self_validation_per_volume_shared_by_its_slices(tmp_path, study, choices_made, single_torch_thread):
    shared = run([study], tmp_path / "volume", adapt=QUICK_ADAPT, **SETTINGS)
    # the reference slice's, and its training slices' calibration runs (steered volumes pool their std too)
    assert shared.ok and shared.done == 3 and len(choices_made) == REFERENCE
    per_slice = run([study], tmp_path / "slice", adapt=QUICK_ADAPT, self_validation="slice", **SETTINGS)
    assert per_slice.ok and len(choices_made) == REFERENCE + 3
    volume, attrs = _read(tmp_path / "volume" / "vol.h5")
    single, _ = _read(tmp_path / "slice" / "vol.h5")
    for index in (0, 1, 2):  # every slice samples with the volume's adapters, trained on all three slices
        assert not np.array_equal(volume["mean"][index], single["mean"][index])
    import json

    info = json.loads(attrs["metadata"])["volume_choice"]
    assert info["std_scale"] > 0 and info["metadata"]["steering"]["kept"] is True
    assert info["metadata"]["steering"]["training_images"] == 3


@pytest.mark.parametrize("count", [8, 16])
def test_training_slices_spread_over_the_volume_around_its_reference(count):
    from recon.batch.runner import reference_slice, training_slices

    assert training_slices(1, count) == [] and training_slices(3, count) == [0, 2]
    for n in (5, 8, 30, 128):
        picked = training_slices(n, count)
        assert len(picked) == min(count, n) - 1 and reference_slice(n) not in picked
        assert len(set(picked)) == len(picked) and 0 <= min(picked) and max(picked) < n
    assert max(training_slices(128, count)) - min(training_slices(128, count)) > 100  # the whole volume


@pytest.mark.parametrize("adapt", ["auto", "off"])
@pytest.mark.parametrize("modality, settings, count", [("ct", dict(n_angles=12), 16), ("mri", dict(acceleration=4), 8),
                                                      ("sr", dict(factor=2), 8)])
def test_a_files_training_slices_follow_its_operators_data_consistency(tmp_path, monkeypatch, modality, settings, count,
                                                                       adapt):
    """The runner reads the slices' operator from the file's spec: 16 training slices for CT, 8 where the
    data consistency is an exact projection (a spec is a plain dict, which has no ``exact_projection``);
    without steering the same slices calibrate the std."""
    from recon.batch import runner
    from recon.batch.settings import BatchSettings
    from recon.io.simulate import simulate_study
    from recon.io.slices import Volume

    path = simulate_study(Volume(np.random.default_rng(0).random((20, 16, 16), dtype=np.float32)),
                          str(tmp_path / f"{modality}.h5"), modality, noise=0.01, **settings)
    batch = BatchSettings(adapt=adapt)
    source = runner.open_input(path, batch)
    asked = []
    monkeypatch.setattr(runner, "training_slices", lambda n, k: asked.append((n, k)) or [])
    runner._with_neighbours(runner._Plan(source, None, [], batch), source.read(10, 0))
    assert asked == [(20, count)]


def test_a_single_sample_volume_without_steering_reads_no_neighbours(tmp_path):
    """K = 1 calibrates nothing and trains nothing: the reference slice goes alone."""
    from recon.batch import runner
    from recon.batch.settings import BatchSettings

    path = write_native_ct(str(tmp_path / "vol.h5"), example_images(5, 16)[0], n_angles=12, seed=1)
    batch = BatchSettings(samples=1)
    source = runner.open_input(path, batch)
    alone = runner._Plan(source, None, [], batch.for_volume(source.n_slices))
    assert runner._with_neighbours(alone, source.read(2, 0)).neighbours == ()
    calibrated = runner._Plan(source, None, [], BatchSettings(samples=2).for_volume(source.n_slices))
    assert len(runner._with_neighbours(calibrated, source.read(2, 0)).neighbours) == 4


def test_a_volume_without_steering_shares_the_median_of_its_slices_ratios(tmp_path, study, single_torch_thread):
    """The reference's choice holds the median ratio of itself and the volume's other slices, and every
    slice's std is the samples' spread at that scale (a per-slice run's std rescaled)."""
    import json
    import statistics

    shared = run([study], tmp_path / "volume", **SETTINGS)
    per_slice = run([study], tmp_path / "slice", self_validation="slice", **SETTINGS)
    assert shared.ok and per_slice.ok
    volume, attrs = _read(tmp_path / "volume" / "vol.h5")
    single, _ = _read(tmp_path / "slice" / "vol.h5")
    record = json.loads(attrs["metadata"])["volume_choice"]["metadata"]
    ratios = [record["shared_error_ratio_slice"], *record["neighbour_shared_error_ratios"]]
    assert len(ratios) == REFERENCE and record["shared_error_ratio"] == statistics.median(ratios)
    assert record["std_scale"] == selfvalidation.std_scale(statistics.median(ratios), SETTINGS["samples"])
    assert np.array_equal(volume["mean"], single["mean"])
    own = selfvalidation.std_scale(ratios[0], SETTINGS["samples"])  # the reference's own scale, as run per slice
    assert record["std_scale"] != own
    assert np.allclose(volume["std"][1], single["std"][1] * record["std_scale"] / own, rtol=1e-5, atol=1e-8)


def test_a_reference_whose_operator_cannot_be_built_does_not_stop_the_run(tmp_path, monkeypatch):
    """A slice whose operator fails to build (NaN coil maps) fails on its own turn; choosing the
    training slices for it must not raise out of the runner and end every file's run."""
    from recon.batch import runner
    from recon.batch.settings import BatchSettings
    from recon.io.simulate import simulate_study
    from recon.io.slices import Volume

    path = simulate_study(Volume(np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)),
                          str(tmp_path / "ct.h5"), "ct", noise=0.01, n_angles=12)
    batch = BatchSettings(adapt="auto")
    source = runner.open_input(path, batch)
    item = source.read(2, 0)

    def broken(spec):
        raise ValueError("coil_maps contain NaN or Inf")

    monkeypatch.setattr(runner, "build_physics", broken)
    asked = []
    monkeypatch.setattr(runner, "training_slices", lambda n, k: asked.append(k) or [])
    assert runner._with_neighbours(runner._Plan(source, None, [], batch), item).neighbours == ()
    assert asked == [runner.TRAINING_SLICES["projection"]]


def test_ct_volumes_train_on_more_slices_than_exact_projections():
    """By the data-consistency step, as the adapters' rank: 16 slices behind CT's CG step, 8 behind MRI's
    and SR's exact projections (and behind CT's CG where a user turns the projection off)."""
    from recon.batch.runner import TRAINING_SLICES
    from recon.methods.data_consistency import closed_form
    from operators import CartesianMRI, ParallelBeamCT

    assert TRAINING_SLICES == {"projection": 8, "cg": 16}
    mri = CartesianMRI((32, 32), acceleration=4, seed=0)
    assert closed_form(mri) and not closed_form(mri, use_project=False)
    assert not closed_form(ParallelBeamCT((32, 32), n_angles=8))


def test_the_data_consistency_step_is_named_in_one_place():
    """"projection" and "cg" were written out in steering's defaults and in the batch runner; both take the
    name from data_consistency.step_kind, and every table keyed by it has exactly its two names."""
    from recon.batch import runner
    from recon.methods import steering
    from recon.methods.data_consistency import step_kind

    names = {step_kind(True), step_kind(False)}
    assert names == {"projection", "cg"}
    for table in (steering.DEFAULT_RANK, steering.DEFAULT_SIGMA_FLOOR, steering.DEFAULT_START_FACTOR,
                  runner.TRAINING_SLICES):
        assert set(table) == names
    assert steering.step_kind is step_kind and runner.step_kind is step_kind


def test_steering_without_shared_choice_reads_no_neighbours(tmp_path, study, monkeypatch, single_torch_thread):
    seen = []
    original = recon.methods.reconstruct

    def spy(y, physics, **kwargs):
        seen.append(kwargs.get("neighbours"))
        return original(y, physics, **kwargs)

    monkeypatch.setattr(recon.methods, "reconstruct", spy)
    assert run([study], tmp_path / "slice", adapt=QUICK_ADAPT, self_validation="slice", **SETTINGS).ok
    assert seen == [None, None, None]


def test_a_resumed_run_reuses_the_stored_choice(tmp_path, study, choices_made, monkeypatch, single_torch_thread):
    clean = run([study], tmp_path / "clean", **SETTINGS)
    assert clean.ok and len(choices_made) == REFERENCE
    original = recon.methods.reconstruct
    calls = []

    def first_member_fails(y, physics, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the reference runs first; the next slice fails
            raise RuntimeError("killed")
        return original(y, physics, **kwargs)

    monkeypatch.setattr(recon.methods, "reconstruct", first_member_fails)
    broken = run([study], tmp_path / "resumed", **SETTINGS)
    assert broken.failed == 1 and len(choices_made) == 2 * REFERENCE
    monkeypatch.setattr(recon.methods, "reconstruct", original)
    resumed = run([study], tmp_path / "resumed", **SETTINGS)
    assert resumed.done == 1 and resumed.skipped == 2 and len(choices_made) == 2 * REFERENCE  # none new
    a, _ = _read(tmp_path / "clean" / "vol.h5")
    b, _ = _read(tmp_path / "resumed" / "vol.h5")
    for name in ("mean", "std"):
        assert np.array_equal(a[name], b[name]), name


def test_a_failed_reference_leaves_each_slice_to_self_validate(tmp_path, study, choices_made, monkeypatch,
                                                                single_torch_thread):
    original = recon.methods.reconstruct
    calls = []

    def reference_fails(y, physics, **kwargs):
        calls.append(kwargs.get("choice"))
        if len(calls) == 1:
            raise RuntimeError("solver diverged")
        return original(y, physics, **kwargs)

    monkeypatch.setattr(recon.methods, "reconstruct", reference_fails)
    summary = run([study], tmp_path / "out", **SETTINGS)
    assert summary.done == 2 and summary.failed == 1 and summary.failures[0][1] == 1
    assert calls[1:] == [None, None] and len(choices_made) == 2  # each its own self-validation
    log = (tmp_path / "out" / "recon-batch.log").read_text()
    assert "reference slice 1 failed" in log and "solver diverged" in log
    again = run([study], tmp_path / "out", **SETTINGS)  # the retried reference self-validates for itself too
    assert again.done == 1 and again.skipped == 2 and len(choices_made) == 3
    per_slice = run([study], tmp_path / "slice", self_validation="slice", **SETTINGS)
    a, _ = _read(tmp_path / "out" / "vol.h5")
    b, _ = _read(tmp_path / "slice" / "vol.h5")
    assert per_slice.ok and np.array_equal(a["std"], b["std"])  # as if each slice had its own choice


def test_an_unusable_saved_choice_is_made_again(tmp_path, study, choices_made, monkeypatch, single_torch_thread):
    original = recon.methods.reconstruct
    calls = []

    def last_fails(y, physics, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(y, physics, **kwargs)

    monkeypatch.setattr(recon.methods, "reconstruct", last_fails)
    assert run([study], tmp_path / "out", **SETTINGS).failed == 1
    monkeypatch.setattr(recon.methods, "reconstruct", original)
    saved = tmp_path / "out" / "vol.parts" / "choice.npz"
    np.savez(saved, _info=np.array('{"prior_label": "ct"}'))  # a record that cannot be rebuilt
    again = run([study], tmp_path / "out", **SETTINGS)
    assert again.ok and again.done == 2 and len(choices_made) == 2 * REFERENCE  # the reference made it again
    clean = run([study], tmp_path / "clean", **SETTINGS)
    a, _ = _read(tmp_path / "out" / "vol.h5")
    b, _ = _read(tmp_path / "clean" / "vol.h5")
    assert clean.ok and np.array_equal(a["mean"], b["mean"]) and np.array_equal(a["std"], b["std"])


def test_the_setting_is_checked_and_counts_only_where_it_applies():
    from recon.batch.settings import validate

    with pytest.raises(ValueError, match="self_validation"):
        validate({"self_validation": "study"})
    with pytest.raises(ValueError, match="adapt"):
        validate({"method": "tv", "adapt": "on"})
    with pytest.raises(ValueError, match="adapt"):
        validate({"adapt": "sometimes"})
    assert validate({}).shares_choice() and validate({"adapt": "auto", "samples": 1}).shares_choice()
    # nothing to calibrate, nothing to adapt (a single sample is not steered by default, even over a long file)
    assert not validate({"samples": 1}).for_volume(48).shares_choice()
    assert not validate({"method": "fbp"}).shares_choice()


def test_adapt_takes_a_table_of_options_checked_before_work():
    from recon.batch.settings import validate

    with pytest.raises(ValueError, match="adapt.*patch"):
        validate({"adapt": {"mode": "on", "patch": 0}})
    with pytest.raises(ValueError, match="adapt.*mode"):
        validate({"adapt": {"mode": "sometimes"}})
    table = validate({"adapt": {"mode": "auto", "train_steps": 50}})
    assert table.shares_choice()
    # a resumed output must match the options, the objective among them
    on, misfit = validate({"adapt": "on"}), validate({"adapt": {"mode": "on", "objective": "misfit"}})
    assert on.fingerprint() != misfit.fingerprint()
    assert validate({"adapt": {"mode": "on"}}).fingerprint() == on.fingerprint()  # the same computation
    with pytest.raises(ValueError, match="misfit"):  # genreg has no sampling loop to steer
        validate({"method": "genreg", "adapt": {"mode": "on", "objective": "misfit"}})
    assert on.output_settings()["adapt"] == "on"


def test_t0_validate_runs_once_per_volume(tmp_path, study, monkeypatch, single_torch_thread):
    from recon.methods import option_choice

    validations = []
    original = option_choice.choose_t0_factor

    def counting(*args, **kwargs):
        validations.append(1)
        return (yield from original(*args, **kwargs))

    monkeypatch.setattr(option_choice, "choose_t0_factor", counting)
    settings = {**SETTINGS, "t0": "validate"}
    done = run([study], tmp_path / "volume", **settings)
    assert done.ok and done.done == 3 and len(validations) == 1
    with h5py.File(tmp_path / "volume" / "vol.h5", "r") as f:
        import json

        factor = json.loads(f.attrs["metadata"])["volume_choice"]["options"]["t0_factor"]
    assert factor in option_choice.T0_FACTORS


def test_a_bad_training_slice_is_left_out_and_the_reference_goes_on(tmp_path, single_torch_thread):
    """A slice with NaN in its measurement fails on its own turn; as a training slice it is left out
    (logged), and the reference still makes the volume's choice from the others."""
    import json

    path = write_native_ct(str(tmp_path / "vol.h5"), example_images(4, 16)[0], n_angles=12, seed=1)
    with h5py.File(path, "r+") as f:
        f["measurement"][0, 0, 0] = np.nan
    summary = run([path], tmp_path / "out", **SETTINGS)
    assert summary.done == 3 and summary.failed == 1 and summary.failures[0][1] == 0
    _, attrs = _read(tmp_path / "out" / "vol.h5")
    record = json.loads(attrs["metadata"])["volume_choice"]["metadata"]
    assert len(record["neighbour_shared_error_ratios"]) == 2  # slices 1 and 3 beside the reference, slice 2
    assert "slice 0 has NaN or Inf values; the volume's choice is made without it" in (
        tmp_path / "out" / "recon-batch.log").read_text()


def test_unset_adapt_steers_a_long_file_once_and_resumes_as_explicit_auto(tmp_path, study, monkeypatch,
                                                                         single_torch_thread):
    """Over a file as long as ``AUTO_ADAPT_SLICES`` (lowered here to the study's 3 slices, the samples
    to 2 and the training shortened) the default trains the volume's adapters, as the explicit setting
    would: its output resumes under it and is refused under "off"."""
    from recon.batch import SettingsConflict
    from recon.methods import volume

    monkeypatch.setattr(volume, "AUTO_ADAPT_SLICES", 3)
    monkeypatch.setattr(volume, "AUTO_ADAPT_SAMPLES", 2)
    auto = {**QUICK_ADAPT, "mode": "auto"}
    monkeypatch.setattr(volume, "VOLUME_ADAPT", auto)
    quick = SETTINGS
    assert run([study], tmp_path / "out", dry_run=True, **quick).work[0][5] == auto
    assert run([study], tmp_path / "out", **quick).ok
    _, attrs = _read(tmp_path / "out" / "vol.h5")
    import json

    steering = json.loads(attrs["metadata"])["volume_choice"]["metadata"]["steering"]
    assert steering["training_images"] == 3 and "kept" in steering
    assert run([study], tmp_path / "out", adapt=auto, **quick).skipped == 3
    with pytest.raises(SettingsConflict):
        run([study], tmp_path / "out", adapt="off", **quick)
    monkeypatch.setattr(volume, "AUTO_ADAPT_SLICES", 4)  # a shorter file than that is not steered
    assert run([study], tmp_path / "short", dry_run=True, **quick).work[0][5] == "off"


def test_rerunning_a_finished_output_keeps_what_its_volume_chose(tmp_path, study, single_torch_thread):
    """A no-op rerun unpacked the finished output and assembled it again without its volume_choice (its
    choice.npz went with the shards); the arrays stayed, the record of the choice was lost."""
    assert run([study], tmp_path / "out", **SETTINGS).ok
    before, attrs = _read(tmp_path / "out" / "vol.h5")
    rerun = run([study], tmp_path / "out", **SETTINGS)
    assert rerun.ok and rerun.done == 0
    after, attrs_after = _read(tmp_path / "out" / "vol.h5")
    import json

    assert json.loads(attrs_after["metadata"])["volume_choice"] == json.loads(attrs["metadata"])["volume_choice"]
    assert all(np.array_equal(before[name], after[name]) for name in ("mean", "std"))
