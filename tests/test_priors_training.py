"""Training: loss goes down, resume is exact, HDF5 input is checked, the CLI writes a loadable prior."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from recon.priors import load_prior, train
from recon.priors.data import HDF5Images, held_out_images, training_source
from recon.priors.network import EDMDenoiser, UNetConfig, edm_loss_weight
from recon.priors.training import TrainOptions, sample_sigmas

TINY = dict(size=16, batch_size=8, widths=(8, 16), lr=2e-3, warmup=5, validate_every=1000, checkpoint_every=1000)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _fixed_loss(path) -> float:
    """EDM loss of a checkpoint's EMA network on a fixed batch of phantoms and noise."""
    payload = torch.load(path, weights_only=True)
    net = EDMDenoiser(UNetConfig.from_dict(payload["config"]))
    net.load_state_dict(payload["state_dict"])
    rng = np.random.default_rng(99)
    images = torch.from_numpy(training_source("ct").sample(rng, 32, 16))[:, None]
    generator = torch.Generator().manual_seed(5)
    sigma = sample_sigmas(32, TrainOptions(), generator)
    noise = torch.randn(images.shape, generator=generator)
    with torch.no_grad():
        out = net(images + sigma.view(-1, 1, 1, 1) * noise, sigma)
    return float((edm_loss_weight(sigma).view(-1, 1, 1, 1) * (out - images) ** 2).mean())


def test_training_reduces_loss(tmp_path):
    start = train("ct", out=tmp_path / "a.pt", steps=1, ema_decay=0.0, **TINY)
    initial = _fixed_loss(start)
    trained = train("ct", out=tmp_path / "b.pt", steps=60, ema_decay=0.9, **TINY)
    assert _fixed_loss(trained) < 0.7 * initial


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    straight = train("ct", out=tmp_path / "straight.pt", steps=6, **TINY)
    interrupted = tmp_path / "interrupted.pt"
    train("ct", out=interrupted, steps=6, stop_after=3, **TINY)
    assert torch.load(interrupted, weights_only=True)["training"]["step"] == 3
    train("ct", out=interrupted, steps=6, **TINY)  # resumes from step 3
    a, b = torch.load(straight, weights_only=True), torch.load(interrupted, weights_only=True)
    assert b["training"]["step"] == 6
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["training"]["model"][key], b["training"]["model"][key]), key


def test_worker_processes_draw_the_same_batches(tmp_path):
    """Prefetching in 2 spawned processes changes the speed, not the weights."""
    inline = torch.load(train("ct", out=tmp_path / "inline.pt", steps=4, **TINY), weights_only=True)
    pooled = torch.load(train("ct", out=tmp_path / "pooled.pt", steps=4, workers=2, **TINY), weights_only=True)
    for key in inline["state_dict"]:
        assert torch.equal(inline["state_dict"][key], pooled["state_dict"][key]), key


def test_time_limit_stops_with_a_resumable_checkpoint(tmp_path):
    out = train("ct", out=tmp_path / "timed.pt", steps=10_000, max_minutes=1e-9, **TINY)
    assert torch.load(out, weights_only=True)["training"]["step"] == 1
    with pytest.raises(ValueError, match="workers"):
        train("ct", out=tmp_path / "bad.pt", steps=1, workers=-1, **TINY)


def test_fine_tuning_starts_from_the_given_prior(tmp_path):
    base = train("ct", out=tmp_path / "base.pt", steps=3, **TINY)
    tuned = train("natural", out=tmp_path / "tuned.pt", steps=1, init_from=base,
                  **{**TINY, "lr": 1e-12, "widths": (8, 16)})
    a, b = torch.load(base, weights_only=True), torch.load(tuned, weights_only=True)
    for key in a["state_dict"]:  # one step at a negligible learning rate: still the base weights
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-6), key
    assert str(base) in b["metadata"]["init_from"] and "sha256" in b["metadata"]["init_from"]
    with pytest.raises(ValueError, match="widths"):
        train("ct", out=tmp_path / "x.pt", steps=1, init_from=base, **{**TINY, "widths": (8, 16, 32)})
    with pytest.raises(FileNotFoundError, match="init_from"):
        train("ct", out=tmp_path / "y.pt", steps=1, init_from=tmp_path / "missing.pt", **TINY)


def test_training_checkpoint_is_a_loadable_prior_with_validation(tmp_path):
    out = train("ct", out=tmp_path / "c.pt", steps=2, name="mine", **{**TINY, "validate_every": 2})
    prior = load_prior(out)
    assert prior.metadata["name"] == "mine" and prior.metadata["steps"] == 2
    assert set(prior.metadata["validation_psnr"]) == {"0.05", "0.1", "0.2", "0.5"}


def _write_h5(path, **datasets):
    with h5py.File(path, "w") as handle:
        for key, value in datasets.items():
            if key == "group":
                handle.create_group(key)
            else:
                handle[key] = value
    return path


def test_hdf5_training_and_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(100, 3000, (12, 24, 24)).astype(np.float32)
    path = _write_h5(tmp_path / "scans.h5", images=images, with_channel=images[:, None])
    source = HDF5Images(path, "images", "minmax")
    assert source.images.min() == 0.0 and source.images.max() == 1.0
    assert HDF5Images(path, "with_channel", "per-image").images.shape == (12, 24, 24)
    out = train(data="ignored", hdf5=path, key="images", out=tmp_path / "h.pt", steps=2, **TINY)
    described = load_prior(out).metadata["training_data"]
    assert described.startswith("HDF5 scans.h5:images (12 images") and "11 trained, 1 held out" in described


def test_a_checkpoint_that_counted_its_held_out_images_as_trained_still_resumes(tmp_path):
    """Until 0.27.3 training_data said the file's count (12 images) where 11 were trained: it still resumes."""
    images = np.random.default_rng(0).uniform(0, 1, (12, 24, 24)).astype(np.float32)
    path = _write_h5(tmp_path / "scans.h5", images=images)
    out = train(hdf5=path, key="images", out=tmp_path / "h.pt", steps=2, **TINY)
    payload = torch.load(out, weights_only=True)
    assert payload["metadata"]["training_data"].endswith(": 11 trained, 1 held out for validation")
    payload["metadata"]["training_data"] = "HDF5 scans.h5:images (12 images 24x24, normalise=minmax)"
    torch.save(payload, out)
    train(hdf5=path, key="images", out=out, steps=3, **TINY)
    assert torch.load(out, weights_only=True)["training"]["step"] == 3


def test_hdf5_that_is_not_images_is_rejected(tmp_path):
    path = _write_h5(tmp_path / "bad.h5", labels=np.array([b"a", b"b"]), vector=np.arange(10.0),
                     tiny=np.zeros((3, 4, 4)), wide=np.zeros((2, 3, 16, 16)), group=None,
                     big=np.full((2, 16, 16), 7.0))
    with pytest.raises(ValueError, match=r"bad.h5:labels has dtype .*expected real numbers"):
        HDF5Images(path, "labels")
    with pytest.raises(ValueError, match=r"bad.h5:vector has shape \(10,\)"):
        HDF5Images(path, "vector")
    with pytest.raises(ValueError, match="at least 8x8"):
        HDF5Images(path, "tiny")
    with pytest.raises(ValueError, match=r"shape \(2, 3, 16, 16\)"):
        HDF5Images(path, "wide")
    with pytest.raises(ValueError, match="is a group"):
        HDF5Images(path, "group")
    with pytest.raises(ValueError, match="no dataset 'missing'"):
        HDF5Images(path, "missing")
    with pytest.raises(ValueError, match="normalise='none' needs images in"):
        HDF5Images(path, "big", normalise="none")
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        HDF5Images(tmp_path / "nothing.h5", "x")
    with pytest.raises(ValueError, match="dataset key"):
        train(hdf5=path, out=tmp_path / "x.pt", steps=1)


def test_a_file_given_as_built_in_data_is_pointed_to_hdf5(tmp_path):
    path = _write_h5(tmp_path / "images.h5", images=np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="--hdf5"):
        training_source(str(path))
    with pytest.raises(ValueError, match="expected one of") as info:
        training_source("cat")
    assert "--hdf5" not in str(info.value)  # a name that is not a file gets the list only


def test_cli_train_writes_a_loadable_prior(tmp_path):
    from typer.testing import CliRunner

    from recon.cli import app

    out = tmp_path / "cli.pt"
    result = CliRunner().invoke(app, ["train", "ct", "--out", str(out), "--steps", "2", "--size", "16",
                                      "--batch-size", "4", "--widths", "8,16"])
    assert result.exit_code == 0, result.output
    assert load_prior(out).metadata["steps"] == 2
    listing = CliRunner().invoke(app, ["priors", str(out)])
    assert listing.exit_code == 0 and "steps: 2" in listing.output


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("kind", ["ct", "mri", "natural"])
def test_held_out_images_are_fixed_and_in_range(kind):
    a, b = held_out_images(kind, 32), held_out_images(kind, 32)
    assert a.dtype == np.float32 and a.ndim == 3 and a.shape[1:] == (32, 32) and len(a) >= 3
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1 and a.std() > 0.05


def test_training_data_exclude_the_held_out_images():
    from recon.priors import data

    axial = data.mri_training_indices((197, 233, 189))[2]
    assert not set(axial) & set(range(data.MRI_HELD_OUT_AXIAL.start - 1, data.MRI_HELD_OUT_AXIAL.stop + 1))
    assert len(axial) > 150
    assert not set(data.NATURAL_TRAINING) & set(data.NATURAL_HELD_OUT)


@pytest.mark.parametrize("kind", ["ct", "mri", "natural"])
def test_training_batches_are_reproducible_per_step(kind, monkeypatch):
    from recon.priors import data

    if kind == "mri":  # the augmentation is under test here; a few slabs stand in for the full slice pool
        monkeypatch.setattr(data, "_mri_training_pool", lambda: data._brain_slices(2, range(60, 120, 10)))
    source = training_source(kind)
    a = source.sample(np.random.default_rng([0, 7]), 4, 32)
    b = source.sample(np.random.default_rng([0, 7]), 4, 32)
    c = source.sample(np.random.default_rng([0, 8]), 4, 32)
    assert a.shape == (4, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.cuda
def test_training_on_gpu_with_mixed_precision_gives_a_cuda_prior(tmp_path):
    out = train("ct", out=tmp_path / "gpu.pt", steps=3, device="cuda", amp=True, **TINY)
    prior = load_prior(out, device="cuda")
    x = torch.rand(2, 1, 16, 16, device="cuda")
    assert prior(x, 0.1).device.type == "cuda" and torch.isfinite(prior(x, 0.1)).all()


def test_resume_with_other_data_is_refused(tmp_path):
    out = train("ct", out=tmp_path / "ct.pt", steps=1, **TINY)
    with pytest.raises(ValueError, match="ct.pt was trained on .*phantoms.*not on .*scikit-image"):
        train("natural", out=out, steps=2, **TINY)


def test_natural_patches_larger_than_the_smallest_sample_image():
    """microaneurysms is 102 px: 128 px patches must come from the other images, not crash."""
    source = training_source("natural")
    patches = source.sample(np.random.default_rng(0), 6, 128)
    assert patches.shape == (6, 128, 128) and np.isfinite(patches).all()
    with pytest.raises(ValueError, match="no natural training image is 4096 px"):
        source.sample(np.random.default_rng(0), 1, 4096)


def test_zoom_sets_the_field_of_view_of_scan_views_and_is_checked():
    """A smaller zoom shows more of the slice: the head fills less of the patch; bad ranges are refused."""
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    close = training_source("mri", zoom=(3.0, 3.0)).sample(rng(), 8, 32)
    wide = training_source("mri", zoom=(0.6, 0.6)).sample(rng(), 8, 32)
    assert (wide > 0.05).mean() < (close > 0.05).mean()
    assert "zoom 0.6-0.6" in training_source("mri", zoom=(0.6, 0.6)).description
    assert training_source("mri").description == training_source("mri", zoom=(0.85, 4)).description
    for bad in [(2.0, 1.0), (0.0, 1.0), (1.0,), "x"]:
        with pytest.raises(ValueError, match="zoom"):
            training_source("mri", zoom=bad)
    with pytest.raises(ValueError, match="no zoom range"):
        training_source("natural", zoom=(1, 2))


def test_zoom_is_kept_on_resume(tmp_path):
    out = train("mri", out=tmp_path / "z.pt", steps=1, zoom=(0.7, 2.0), **TINY)
    saved = torch.load(out, weights_only=True)
    assert saved["training"]["options"]["zoom"] == [0.7, 2.0] and "zoom 0.7-2" in saved["metadata"]["training_data"]
    assert saved["metadata"]["training_zoom"] == [0.7, 2.0]
    train("mri", out=out, steps=2, **TINY)  # resumes with the saved zoom: same data description
    assert torch.load(out, weights_only=True)["training"]["step"] == 2


@pytest.mark.parametrize("option, value", [("steps", 0), ("steps", -5), ("batch_size", 0), ("checkpoint_every", 0),
                                           ("validate_every", -1)])
def test_counts_below_one_are_refused_before_the_first_step(tmp_path, monkeypatch, option, value):
    """A zero checkpoint interval used to fail after a step; steps 0 reported a checkpoint never written."""
    from recon.priors import training

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training._Run, "fit", must_not_train)
    given = {"steps": 2, option: value}
    with pytest.raises(ValueError, match=f"{option} must be an integer >= 1"):
        training.train("ct", out=tmp_path / "p.pt", size=16, widths=(8, 16), **given)
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize("sigmas", [{"sigma_min": 0.0}, {"sigma_min": 90.0}, {"sigma_max": float("inf")}])
def test_a_noise_range_the_checkpoint_could_not_load_with_is_refused_before_the_first_step(tmp_path, monkeypatch,
                                                                                           sigmas):
    from recon.priors import training

    monkeypatch.setattr(training._Run, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="training noise range: prior metadata sigma_m"):
        training.train("ct", out=tmp_path / "p.pt", size=16, widths=(8, 16), steps=2, **sigmas)
    assert not (tmp_path / "p.pt").exists()


def test_an_out_that_is_the_training_file_a_folder_or_a_users_file_is_refused_before_work(tmp_path):
    from typer.testing import CliRunner

    from recon.cli import app

    images = np.random.default_rng(0).uniform(0, 1, (4, 16, 16)).astype(np.float32)
    path = _write_h5(tmp_path / "scans.h5", images=images)
    before = path.read_bytes()
    for resume in ("--resume", "--no-resume"):
        result = CliRunner().invoke(app, ["train", "--hdf5", str(path), "--key", "images", "--out", str(path),
                                          resume, "--steps", "1", "--size", "16", "--widths", "8,16"])
        message = " ".join(result.output.replace("│", " ").split())  # the error box wraps lines
        assert result.exit_code == 2 and "is the HDF5 training file itself" in message, result.output
    assert path.read_bytes() == before  # the user's training data, untouched
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        train("ct", out=tmp_path / "folder", resume=False, steps=1, **TINY)
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes")
    with pytest.raises(ValueError, match="notes.txt exists and is not a checkpoint"):
        train("ct", out=notes, resume=False, steps=1, **TINY)
    with pytest.raises(ValueError, match=r"notes.txt is not a file torch.save wrote \(it begins b.a user"):
        train("ct", out=notes, steps=1, **TINY)
    assert notes.read_text() == "a user's notes"
    previous = train("ct", out=tmp_path / "run.pt", steps=1, **TINY)
    train("ct", out=previous, resume=False, steps=2, **TINY)  # a checkpoint is replaced as asked
    assert torch.load(previous, weights_only=True)["training"]["step"] == 2


def test_an_hdf5_dataset_without_images_or_of_one_value_is_refused(tmp_path):
    path = _write_h5(tmp_path / "odd.h5", empty=np.zeros((0, 16, 16)), flat=np.full((3, 16, 16), 40.0))
    with pytest.raises(ValueError, match=r"odd.h5:empty has shape \(0, 16, 16\): no images"):
        HDF5Images(path, "empty")
    with pytest.raises(ValueError, match="odd.h5:flat holds 3 image.s. of the one value 40"):
        HDF5Images(path, "flat")


def test_fine_tuning_from_a_prior_of_another_architecture_is_refused_by_name(tmp_path):
    from recon.priors.checkpoint import save_checkpoint

    other = UNetConfig(channels=1, widths=(8, 16), embedding_dim=16, groups=4)
    save_checkpoint(tmp_path / "small.pt", other.to_dict(), EDMDenoiser(other).state_dict(), {"name": "small"})
    with pytest.raises(ValueError, match=r"init_from=.*small.pt has the architecture \{'embedding_dim': 16, 'groups': 4\}"):
        train("ct", out=tmp_path / "tuned.pt", steps=1, init_from=tmp_path / "small.pt", **TINY)
    assert not (tmp_path / "tuned.pt").exists()


def test_a_diverging_run_stops_before_it_saves_broken_weights(tmp_path, monkeypatch):
    """A NaN loss used to train on and save checkpoints of NaN weights at every checkpoint step."""
    import recon.priors.training as training

    monkeypatch.setattr(training, "edm_loss_weight", lambda sigma: torch.full_like(sigma, float("nan")))
    with pytest.raises(FloatingPointError, match="diverged at step 1"):
        train("ct", out=tmp_path / "p.pt", steps=3, **{**TINY, "checkpoint_every": 1})
    assert not (tmp_path / "p.pt").exists()


# ----------------------------------------------------------------------------- your own HDF5 images
def test_images_smaller_than_the_patch_are_refused_not_upscaled(tmp_path):
    """16 x 16 images trained as 4x bilinear upscales at the default size; 16 x 96 ones were squashed to a square;
    a volume stored as (H, W, N) read as H images of W x N, then squashed."""
    rng = np.random.default_rng(0)
    path = _write_h5(tmp_path / "small.h5", small=rng.uniform(0, 1, (6, 16, 16)), wide=rng.uniform(0, 1, (6, 16, 96)),
                     volume=rng.uniform(0, 1, (40, 40, 9)))
    with pytest.raises(ValueError, match=r"small.h5:small holds images of 16x16 pixels, smaller than the 32 px .*--size 16"):
        train(hdf5=path, key="small", out=tmp_path / "a.pt", steps=1, **{**TINY, "size": 32})
    with pytest.raises(ValueError, match=r"16x96 pixels.*\(H, W, N\)\?.*--size 16"):
        train(hdf5=path, key="wide", out=tmp_path / "b.pt", steps=1, **{**TINY, "size": 32})
    with pytest.raises(ValueError, match=r"40x9 pixels.*\(H, W, N\)\?.*--size 8"):
        train(hdf5=path, key="volume", out=tmp_path / "c.pt", steps=1, **TINY)
    assert not any(tmp_path.glob("*.pt"))
    train(hdf5=path, key="small", out=tmp_path / "d.pt", steps=1, **TINY)  # 16 px patches of 16 px images: fine


def test_percentile_scaling_of_mostly_one_value_is_refused(tmp_path):
    """The 99.5th percentile of a sparse image is its background: every other pixel became 1 (binary images)."""
    images = np.zeros((4, 32, 32), np.float32)
    images[:, 3, 3:7] = [0.2, 0.4, 0.6, 1.0]
    path = _write_h5(tmp_path / "sparse.h5", images=images)
    with pytest.raises(ValueError, match="sparse.h5:images: the 0.5th and 99.5th percentiles are both 0.*binary"):
        HDF5Images(path, "images", "percentile")
    assert len(np.unique(HDF5Images(path, "images", "minmax").images)) == 5


def test_a_resume_refuses_other_images_under_the_same_name_and_keeps_its_own_settings(tmp_path):
    """Resumed on another file of the same name and shape without a word; the CLI's defaults (6000 steps,
    minmax) replaced the run's own total and scaling, and its name became the file's stem."""
    from typer.testing import CliRunner

    from recon.cli import app

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = _write_h5(tmp_path / "a" / "scans.h5", images=rng.uniform(0, 1, (5, 16, 16)))
    other = _write_h5(tmp_path / "b" / "scans.h5", images=rng.uniform(0, 1, (5, 16, 16)))
    out = tmp_path / "knee.pt"
    common = ["--key", "images", "--out", str(out), "--size", "16", "--batch-size", "4", "--widths", "8,16"]
    result = CliRunner().invoke(app, ["train", "--hdf5", str(first), *common, "--steps", "2", "--name", "my-knee",
                                      "--normalise", "percentile"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", "--hdf5", str(first), *common])  # a rerun with the flags left out
    assert result.exit_code == 0, result.output
    prior = load_prior(out)
    assert prior.metadata["steps"] == 2 and prior.metadata["name"] == "my-knee"
    assert "normalise=percentile" in prior.metadata["training_data"]
    with pytest.raises(ValueError, match="other images than those now in .*sha256"):
        train(hdf5=other, key="images", out=out, steps=3)


def test_an_out_that_cannot_be_written_is_refused_before_the_first_step(tmp_path, monkeypatch):
    """A file where the checkpoint's folder should be failed at the first save, after that many steps."""
    import recon.priors.training as training

    (tmp_path / "notes").write_text("a user's notes")
    monkeypatch.setattr(training._Run, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match="cannot write into .*notes"):
        train("ct", out=tmp_path / "notes" / "prior.pt", steps=1, **TINY)
    assert (tmp_path / "notes").read_text() == "a user's notes"


def test_one_image_is_trained_on_with_a_warning_that_it_validates_itself(tmp_path, caplog):
    path = _write_h5(tmp_path / "one.h5", image=np.random.default_rng(0).uniform(0, 1, (24, 24)))
    train(hdf5=path, key="image", out=tmp_path / "one.pt", steps=1, **TINY)
    assert "holds one image" in caplog.text and "validation PSNR is on training data" in caplog.text


@pytest.mark.parametrize("number, stops_with", [("SIGTERM", SystemExit), ("SIGINT", KeyboardInterrupt)])
def test_a_termination_signal_saves_the_step_it_reached(tmp_path, monkeypatch, number, stops_with):
    """SIGTERM (a scheduler's pre-emption) or Ctrl-C lost every step since the last checkpoint (250 by default)."""
    import os
    import signal

    import recon.priors.training as training

    step = training._Run.step

    def step_then_signal(self, index, batch):
        value = step(self, index, batch)
        if index == 2:
            os.kill(os.getpid(), getattr(signal, number))
        return value

    monkeypatch.setattr(training._Run, "step", step_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(stops_with) as info:
        train("ct", out=tmp_path / "run.pt", steps=50, **TINY)  # checkpoint_every=1000: none before the end
    assert number == "SIGINT" or info.value.code == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "run.pt", weights_only=True)["training"]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.undo()
    train("ct", out=tmp_path / "run.pt", steps=5, **TINY)  # resumes from step 3
    assert torch.load(tmp_path / "run.pt", weights_only=True)["training"]["step"] == 5


def test_a_second_run_on_the_same_out_is_refused_while_the_first_trains(tmp_path, monkeypatch):
    """Two runs on one --out overwrote each other's checkpoints in turn: the last to save won, silently."""
    import recon.priors.training as training

    step, refusals = training._Run.step, []

    def step_and_start_another(self, index, batch):
        if index == 1:
            with pytest.raises(ValueError, match="another training run is writing .*run.pt") as info:
                train("ct", out=tmp_path / "run.pt", steps=9, **TINY)
            refusals.append(info.value)
            train("ct", out=tmp_path / "other.pt", steps=1, **TINY)  # another --out in the same folder is free
        return step(self, index, batch)

    monkeypatch.setattr(training._Run, "step", step_and_start_another)
    train("ct", out=tmp_path / "run.pt", steps=3, **TINY)
    assert len(refusals) == 1
    assert torch.load(tmp_path / "run.pt", weights_only=True)["training"]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "run.pt"]  # the lock files go with the runs
