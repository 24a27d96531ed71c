"""load_prior: every spec form offline, clear errors for bad checkpoints, and the adapters' conventions."""

from __future__ import annotations

import json

import pytest
import torch

from recon.priors import CheckpointError, Prior, load_prior, score
from recon.priors.checkpoint import save_checkpoint, sha256_of
from recon.priors.external import DEEPINV_MODELS, VPNoisePredictorAdapter, vp_alphas_cumprod
from recon.priors.loading import available_builtins
from recon.priors.network import EDMDenoiser, UNetConfig

TINY = UNetConfig(channels=1, widths=(8, 16, 16, 16), embedding_dim=16, groups=4)
METADATA = {"name": "tiny", "training_data": "test", "sigma_min": 0.002, "sigma_max": 80.0, "resolution": 16}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = EDMDenoiser(TINY)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, TINY.to_dict(), net.state_dict(), METADATA)
    return path, net


# ----------------------------------------------------------------------------- our checkpoints
def test_own_checkpoint_reloads_identically_with_metadata(tiny_checkpoint):
    path, net = tiny_checkpoint
    prior = load_prior(str(path))
    x = torch.rand(2, 1, 24, 40)
    sigma = torch.tensor([0.05, 0.5])
    torch.testing.assert_close(prior(x, sigma), net(x, sigma))
    assert prior.metadata["checksum"] == sha256_of(path)
    assert prior.channels == 1 and prior.metadata["n_params"] == sum(p.numel() for p in net.parameters())
    assert isinstance(prior, Prior)
    # float sigma is the same as a constant tensor
    torch.testing.assert_close(prior(x, 0.1), prior(x, torch.tensor([0.1, 0.1])))


def test_score_is_tweedie(tiny_checkpoint):
    prior = load_prior(tiny_checkpoint[0])
    x = torch.rand(2, 1, 16, 16)
    sigma = torch.tensor([0.1, 0.3])
    expected = (prior(x, sigma) - x) / sigma.view(-1, 1, 1, 1) ** 2
    torch.testing.assert_close(score(prior, x, sigma), expected)


def test_prior_rejects_wrong_channels_and_sizes(tiny_checkpoint):
    prior = load_prior(tiny_checkpoint[0])
    with pytest.raises(ValueError, match="1 channel"):
        prior(torch.rand(1, 3, 16, 16), 0.1)
    with pytest.raises(ValueError, match="multiples of 8"):
        prior(torch.rand(1, 1, 20, 16), 0.1)
    with pytest.raises(ValueError, match="positive"):
        prior(torch.rand(1, 1, 16, 16), 0.0)


def test_channels_another_than_a_checkpoints_own_are_refused(tiny_checkpoint):
    path = tiny_checkpoint[0]
    assert load_prior(path, channels=1).channels == 1
    assert load_prior("ct", channels=1).channels == 1
    for spec in (path, "ct"):
        with pytest.raises(ValueError, match="1-channel images, not 3"):
            load_prior(spec, channels=3)


def test_missing_truncated_corrupt_and_incompatible_checkpoints(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_prior(str(tmp_path / "nothere.pt"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated or corrupt"):
        load_prior(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_prior(garbage)

    wrong_keys = tmp_path / "wrong_keys.pt"
    state = EDMDenoiser(TINY).state_dict()
    state["net.extra.weight"] = state.pop("net.stem.weight")
    save_checkpoint(wrong_keys, TINY.to_dict(), state, METADATA)
    with pytest.raises(CheckpointError, match="wrong_keys.pt.*do not match"):
        load_prior(wrong_keys)

    for key, value in (("channels", -1), ("groups", 0), ("widths", [8, 0, 16, 16]), ("channels", True)):
        bad_config = tmp_path / f"bad_{key}.pt"
        save_checkpoint(bad_config, {**TINY.to_dict(), key: value}, EDMDenoiser(TINY).state_dict(), METADATA)
        with pytest.raises(CheckpointError, match=f"bad_{key}.pt has an unusable architecture config.*{key}"):
            load_prior(bad_config)

    plain = tmp_path / "plain_state_dict.pt"
    torch.save(EDMDenoiser(TINY).state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain_state_dict.pt is not a diffrecon-prior"):
        load_prior(plain)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown prior 'brain'.*'ct'.*'mri'.*deepinv:drunet"):
        load_prior("brain")
    with pytest.raises(ValueError, match="unknown deepinv model 'nope'.*drunet"):
        load_prior("deepinv:nope")
    with pytest.raises(TypeError):
        load_prior(3)


def test_an_empty_spec_a_foreign_device_and_weights_for_a_builtin_are_named():
    with pytest.raises(ValueError, match="empty"):  # was read as the folder "."
        load_prior("")
    with pytest.raises(ValueError, match="device"):  # was torch's own error mid-load
        load_prior("ct", device="tpu")
    with pytest.raises(ValueError, match="weights="):  # was ignored without a word
        load_prior("ct", weights="other.pth")


@pytest.mark.parametrize("name", ["ct", "mri", "natural"])
def test_builtin_priors_are_shipped_and_load(name):
    assert name in available_builtins()
    prior = load_prior(name)
    for key in ("name", "training_data", "channels", "sigma_min", "sigma_max", "resolution", "checksum",
                "architecture", "n_params"):
        assert key in prior.metadata
    assert prior.metadata["sigma_max"] >= 50 and prior.metadata["sigma_min"] <= 0.002
    out = prior(torch.full((1, 1, 32, 48), 0.5), 1.0)
    assert out.shape == (1, 1, 32, 48) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- deepinv models
SMALL_ARCHITECTURES = {
    # the same classes and code path as the real weights, at a size a test can save in a second
    "diffunet-imagenet": {"large_model": False},
    "ncsnpp": {"model_type": "ncsn", "model_channels": 32, "channel_mult": (1, 1, 1, 1), "num_blocks": 1,
               "attn_resolutions": (), "img_resolution": 32},
    "drunet": {"in_channels": 1, "out_channels": 1, "nc": (8, 16, 32, 64), "nb": 1},
}


@pytest.fixture(scope="module")
def diffunet_weights(tmp_path_factory):
    from deepinv.models import DiffUNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deepinv") / "diffunet.pt"
    torch.save(DiffUNet(pretrained=None).state_dict(), path)
    return path


@pytest.mark.parametrize("model", [pytest.param("diffunet-ffhq", marks=pytest.mark.slow),
                                   pytest.param("diffunet-imagenet", marks=pytest.mark.slow), "ncsnpp", "drunet"])
def test_deepinv_models_load_from_local_weights(model, tmp_path, monkeypatch, request):
    entry = DEEPINV_MODELS[model]
    if model in SMALL_ARCHITECTURES:
        monkeypatch.setattr(entry, "architecture", SMALL_ARCHITECTURES[model])
    if model.startswith("diffunet"):
        weights = request.getfixturevalue("diffunet_weights")
    else:
        torch.manual_seed(0)
        net, _ = entry.build(dict(entry.architecture))
        weights = tmp_path / f"{model}.pth"
        torch.save(net.state_dict(), weights)
    prior = load_prior(f"deepinv:{model}@{weights}")
    x = torch.rand(2, 1, 16, 24)
    out = prior(x, torch.tensor([0.05, 0.3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    if model == "drunet":  # DRUNet is D(x, sigma) already: the prior is the network itself
        net, _ = entry.build(dict(entry.architecture))
        net.load_state_dict(torch.load(weights, weights_only=True))
        torch.testing.assert_close(out, net(x, torch.tensor([0.05, 0.3])))
        same = load_prior(f"deepinv:{model}", weights=weights)
        torch.testing.assert_close(out, same(x, torch.tensor([0.05, 0.3])))
    assert prior.channels == 1 and prior.metadata["checksum"] == sha256_of(weights)
    assert prior.metadata["name"] == f"deepinv:{model}"


def test_deepinv_wrong_or_missing_weights_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(DEEPINV_MODELS["drunet"], "architecture", SMALL_ARCHITECTURES["drunet"])
    wrong = tmp_path / "not_drunet.pth"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="not_drunet.pth does not match the DRUNet"):
        load_prior(f"deepinv:drunet@{wrong}")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_prior(f"deepinv:drunet@{tmp_path / 'absent.pth'}")


def test_vp_adapter_recovers_clean_image_with_an_oracle_noise_predictor():
    """With the true noise, the timestep/range conversion must give back the clean image."""
    abar = vp_alphas_cumprod()
    clean = torch.rand(3, 1, 16, 16)
    z_clean = 2 * clean - 1

    def oracle(x_t, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * z_clean) / (1 - a).sqrt()

    adapter = VPNoisePredictorAdapter(oracle, abar, channels=1)
    sigma = torch.tensor([0.01, 0.2, 5.0])
    noisy = clean + sigma.view(-1, 1, 1, 1) * torch.randn_like(clean)
    torch.testing.assert_close(adapter(noisy, sigma), clean, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- diffusers
def test_diffusers_folder_loads(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is optional")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path / "unet"
    unet.save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps({"beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}))
    prior = load_prior(folder)
    x = torch.rand(1, 1, 24, 24)
    out = prior(x, 0.2)
    assert out.shape == x.shape and torch.isfinite(out).all() and prior.metadata["architecture"] == "diffusers.UNet2DModel"
    # the network's own output, converted by hand: eps at the matching timestep
    noise_to_signal = ((1 - vp_alphas_cumprod()) / vp_alphas_cumprod()).sqrt()
    t = (noise_to_signal - 0.4).abs().argmin()
    a = vp_alphas_cumprod()[t]
    eps = unet(((2 * x - 1) * a.sqrt()), t.view(1)).sample
    expected = (((2 * x - 1) - noise_to_signal[t] * eps).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # a pipeline folder (unet/ and scheduler/ subfolders) loads the same network
    pipeline = tmp_path / "pipeline"
    unet.save_pretrained(pipeline / "unet")
    (pipeline / "scheduler").mkdir()
    (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_start": 1e-4, "beta_end": 0.02}))
    torch.testing.assert_close(load_prior(pipeline)(x, 0.2), out)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_prior(tmp_path)


def test_deepinv_download_failure_explains_the_offline_alternative(monkeypatch):
    import urllib.error

    entry = DEEPINV_MODELS["drunet"]
    small = SMALL_ARCHITECTURES["drunet"]
    real_build = entry.build

    def offline_build(architecture, pretrained=None):
        if pretrained is not None:
            raise urllib.error.URLError("no route to host")
        return real_build(architecture)

    monkeypatch.setattr(entry, "architecture", small)
    monkeypatch.setattr(entry, "build", offline_build)
    with pytest.raises(ConnectionError, match=r"deepinv:drunet@/path/to/weights"):
        load_prior("deepinv:drunet")


@pytest.mark.parametrize("model, cls", [("drunet", "DRUNet"), ("ncsnpp", "NCSNpp"), ("diffunet-ffhq", "DiffUNet")])
def test_deepinv_download_asks_deepinv_once_for_its_published_weights(model, cls, monkeypatch):
    """The download builds deepinv's class with ``pretrained=`` the published name, given once (a
    second ``pretrained`` keyword was a TypeError before any download)."""
    import urllib.error

    import deepinv.models

    asked = []

    class Offline:
        def __init__(self, *args, pretrained=None, **kwargs):
            asked.append(pretrained)
            if pretrained is not None:
                raise urllib.error.URLError("no route to host")
            raise RuntimeError("stop after the first build")

    monkeypatch.setattr(deepinv.models, cls, Offline)
    monkeypatch.setattr(DEEPINV_MODELS[model], "build", DEEPINV_MODELS[model].build)
    with pytest.raises(RuntimeError, match="stop after the first build"):
        load_prior(f"deepinv:{model}")
    assert asked == [None]
    from recon.priors.external import _download_into

    with pytest.raises(ConnectionError, match=f"deepinv:{model}@/path/to/weights"):
        _download_into(torch.nn.Linear(1, 1), model, DEEPINV_MODELS[model])
    assert asked == [None, DEEPINV_MODELS[model].download]


@pytest.mark.parametrize("field, value", [("metadata", None), ("metadata", [1]), ("state_dict", [1, 2]),
                                          ("version", "2"), ("training", 3)])
def test_a_checkpoint_with_fields_of_the_wrong_kind_is_refused_by_name(tiny_checkpoint, tmp_path, field, value):
    payload = torch.load(tiny_checkpoint[0], weights_only=True)
    payload[field] = value
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"odd.pt.*'?{field}'?"):
        load_prior(path)


@pytest.mark.parametrize("sigmas, match", [({"sigma_min": -1.0}, "sigma_min must be"),
                                           ({"sigma_max": float("nan")}, "sigma_max must be"),
                                           ({"sigma_max": "80"}, "sigma_max must be"),
                                           ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min 5.0 is not below sigma_max")])
def test_a_checkpoint_with_an_unusable_noise_range_is_refused_by_name(tiny_checkpoint, tmp_path, sigmas, match):
    """The samplers start from sigma_max: such a file loaded and every run used its range unsaid."""
    payload = torch.load(tiny_checkpoint[0], weights_only=True)
    payload["metadata"] = {**payload["metadata"], **sigmas}
    torch.save(payload, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=f"crafted.pt: prior metadata {match}"):
        load_prior(tmp_path / "crafted.pt")


def test_weights_of_another_architecture_are_named_by_key_and_shape(tiny_checkpoint, tmp_path):
    other = UNetConfig(channels=1, widths=(8, 16), embedding_dim=16, groups=4)
    path = tmp_path / "other.pt"
    save_checkpoint(path, TINY.to_dict(), EDMDenoiser(other).state_dict(), METADATA)
    with pytest.raises(CheckpointError, match=r"other.pt: the weights do not match .*widths \[8, 16, 16, 16\].*"
                                              r"missing \(e.g. \['net\..*of another shape.*in the file"):
        load_prior(path)
    prefixed = tmp_path / "prefixed.pt"  # saved from a DataParallel wrapper
    save_checkpoint(prefixed, TINY.to_dict(), {f"module.{k}": v for k, v in EDMDenoiser(TINY).state_dict().items()},
                    METADATA)
    with pytest.raises(CheckpointError, match=r"missing \(e.g. \['net\..*unexpected \(e.g. \['module\.net"):
        load_prior(prefixed)


def test_a_plain_state_dict_is_told_apart_from_a_checkpoint(tmp_path):
    for name, payload in (("plain.pt", EDMDenoiser(TINY).state_dict()),
                          ("wrapped.pt", {"state_dict": EDMDenoiser(TINY).state_dict()})):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name} is not a diffrecon-prior .*plain state dict.*save_checkpoint"):
            load_prior(tmp_path / name)


def test_weights_with_nan_from_a_diverged_run_are_refused_on_loading(tmp_path):
    state = EDMDenoiser(TINY).state_dict()
    state["net.stem.weight"] = torch.full_like(state["net.stem.weight"], float("nan"))
    save_checkpoint(tmp_path / "diverged.pt", TINY.to_dict(), state, METADATA)
    with pytest.raises(CheckpointError, match=r"diverged.pt holds NaN or Inf weights in 1 of .*net.stem.weight"):
        load_prior(tmp_path / "diverged.pt")


@pytest.mark.parametrize("args, expected", [
    (["priors", "no-such-prior"], "no-such-prior"),
    (["priors", "missing.pt"], "does not exist"),
    (["train", "--hdf5", "missing.h5", "--out", "x.pt", "--steps", "1"], "key"),
])
def test_priors_and_train_exit_2_on_a_users_mistake(tmp_path, monkeypatch, args, expected):
    """They exited 1 with "error: ValueError: ...", unlike every other command."""
    from typer.testing import CliRunner

    from recon.cli import app

    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, args)
    message = " ".join(run.output.replace("│", " ").split())  # the error box wraps lines
    assert run.exit_code == 2 and expected in message and "Traceback" not in run.output, run.output
    assert not (tmp_path / "x.pt").exists()


def test_deepinv_weights_with_nan_or_other_shapes_or_no_file_after_the_at_are_refused(tmp_path, monkeypatch):
    """NaN weights loaded (the reconstruction's NaN was then blamed on the data); tensors of other shapes gave
    torch's bare RuntimeError; 'deepinv:drunet@' (an unset variable) went to download; '~' was not expanded."""
    entry = DEEPINV_MODELS["drunet"]
    monkeypatch.setattr(entry, "architecture", SMALL_ARCHITECTURES["drunet"])
    torch.manual_seed(0)
    state = entry.build(dict(entry.architecture))[0].state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    broken = {**state, name: torch.full_like(state[name], float("nan"))}
    torch.save(broken, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="nan.pth holds NaN or Inf weights"):
        load_prior(f"deepinv:drunet@{tmp_path / 'nan.pth'}")
    torch.save({**state, name: torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="shape.pth does not match the DRUNet.*other shapes"):
        load_prior(f"deepinv:drunet@{tmp_path / 'shape.pth'}")
    with pytest.raises(ValueError, match="names no weights file after '@'"):
        load_prior("deepinv:drunet@")
    with pytest.raises(ValueError, match="is a folder"):
        load_prior(f"deepinv:drunet@{tmp_path}")
    torch.save(state, tmp_path / "ok.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_prior("deepinv:drunet@~/ok.pth").metadata["checksum"] == sha256_of(tmp_path / "ok.pth")
