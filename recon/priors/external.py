"""Adapters that turn external denoisers (deepinv's pretrained models, diffusers UNets) into priors.

Why adapters: each external network has its own conventions (DiffUNet and diffusers UNets predict
noise at a discrete timestep of a variance-preserving schedule on [-1, 1] images; NCSN++ wants
[-1, 1] images and EDM sigmas; DRUNet is already D(x, sigma) on [0, 1] images but is trained
only up to sigma = 50/255). The adapters below map every one of them to our single interface
``D(x, sigma)`` with x in [0, 1] and sigma in the same units, so methods never special-case them.

Our scans are grayscale; a colour network serves them through :class:`GrayscaleAdapter`, which
copies the channel three times and averages the output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from recon.priors.checkpoint import CheckpointError, check_finite, read_torch_file, sha256_of
from recon.priors.prior import Prior

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- convention adapters
def vp_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 2e-2, steps: int = 1000) -> torch.Tensor:
    """alpha-bar_t of the linear-beta DDPM schedule that DiffUNet (and most DDPM checkpoints) use."""
    return torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), dim=0).float()


class VPNoisePredictorAdapter(nn.Module):
    """D(x, sigma) from an epsilon-predicting network on a variance-preserving schedule.

    A [0, 1] image with noise ``sigma`` is, on [-1, 1], ``z = x_c + 2 sigma eps``; the VP state at
    timestep t is ``sqrt(abar_t) x_c + sqrt(1 - abar_t) eps``, so ``z * sqrt(abar_t)`` matches it when
    ``(1 - abar_t) / abar_t = (2 sigma)^2``. We take the nearest t, predict eps and apply Tweedie:
    ``x_c = z - sqrt((1 - abar_t) / abar_t) eps``.

    ``predict_noise(x_t, t)`` returns the noise estimate (extra channels such as learned variances
    are dropped). Images are edge-padded to a multiple of ``pad_multiple`` (the network's total
    downsampling) and cropped back, so the prior serves every size that is a multiple of 8.
    """

    def __init__(self, predict_noise: Callable, alphas_cumprod: torch.Tensor, channels: int, pad_multiple: int = 1):
        super().__init__()
        self.predict_noise = predict_noise
        self.channels = channels
        self.pad_multiple = pad_multiple
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(x.device)
        noise_to_signal = ((1 - abar) / abar).sqrt()  # sigma of the timestep on [-1, 1]
        s = 2.0 * sigma.to(x.dtype)
        t = (noise_to_signal[None, :] - s[:, None]).abs().argmin(dim=1)
        z = 2.0 * x - 1.0
        x_t = z * abar[t].sqrt().view(-1, 1, 1, 1)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.pad_multiple, -w % self.pad_multiple
        if pad_h or pad_w:
            x_t = F.pad(x_t, (0, pad_w, 0, pad_h), mode="replicate")
        eps = self.predict_noise(x_t, t)[:, : self.channels, :h, :w]
        # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar): exact for the network's own noise level, so the
        # rounding of sigma to a timestep only shifts which denoiser is used, not the output's scale
        return ((z - noise_to_signal[t].view(-1, 1, 1, 1) * eps).clamp(-1.0, 1.0) + 1.0) / 2.0


class CallDenoiser(nn.Module):
    """A network that already is D(x, sigma) on [0, 1] images (DRUNet, NCSN++ with its EDM wrapper)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(x, sigma)


class GrayscaleAdapter(nn.Module):
    """Run an RGB denoiser on grayscale images: copy the channel to three, average the result."""

    def __init__(self, net: nn.Module, net_channels: int = 3):
        super().__init__()
        self.net = net
        self.net_channels = net_channels

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, self.net_channels, -1, -1), sigma).mean(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- deepinv models
def _build_diffunet(architecture: dict, pretrained=None) -> tuple[nn.Module, Callable[[nn.Module], nn.Module]]:
    from deepinv.models import DiffUNet

    net = DiffUNet(pretrained=pretrained, **architecture)
    adapter = VPNoisePredictorAdapter(lambda x_t, t: net.forward_diffusion(x_t, t), vp_alphas_cumprod(), channels=net.in_channels,
                                      pad_multiple=32)
    adapter.net = net  # registered so .to(device) and parameters() reach it
    return net, adapter


def _build_ncsnpp(architecture: dict, pretrained=None) -> tuple[nn.Module, nn.Module]:
    from deepinv.models import NCSNpp

    conventions = {"precondition_type": "edm", "pixel_std": 0.5, "_was_trained_on_minus_one_one": True}
    net = NCSNpp(pretrained=pretrained, **{**conventions, **architecture})
    # deepinv only sets these conventions when it downloads; a local file needs them set here
    net.precondition_type, net.pixel_std = conventions["precondition_type"], conventions["pixel_std"]
    net._was_trained_on_minus_one_one = True
    return net, CallDenoiser(net)


def _build_drunet(architecture: dict, pretrained=None) -> tuple[nn.Module, nn.Module]:
    from deepinv.models import DRUNet

    net = DRUNet(pretrained=pretrained, **architecture)
    return net, CallDenoiser(net)


@dataclass
class ExternalModel:
    """How to build one deepinv model, what its weights are called and what it was trained for."""

    build: Callable[..., tuple[nn.Module, nn.Module]]  # build(architecture, pretrained=None)
    architecture: dict
    native_channels: int
    download: str  # the ``pretrained=`` value deepinv downloads with
    training_data: str
    resolution: int
    sigma_max: float
    extra: dict = field(default_factory=dict)


DEEPINV_MODELS: dict[str, ExternalModel] = {
    "diffunet-ffhq": ExternalModel(_build_diffunet, {"large_model": False}, 3, "download",
                                   "FFHQ faces 256x256 (deepinv DiffUNet, diffusion_ffhq_10m.pt)", 256, 80.0),
    "diffunet-imagenet": ExternalModel(_build_diffunet, {"large_model": True}, 3, "download",
                                       "ImageNet 256x256 (deepinv DiffUNet, OpenAI diffusion_openai.pt)", 256, 80.0),
    "ncsnpp": ExternalModel(_build_ncsnpp, {"model_type": "ncsn"}, 3, "edm-ffhq-64x64-uncond-ve",
                            "FFHQ 64x64 (EDM NCSN++ VE, edm-ffhq-64x64-uncond-ve.pt)", 64, 80.0),
    "drunet": ExternalModel(_build_drunet, {"in_channels": 1, "out_channels": 1}, 1, "download",
                            "DRUNet grayscale denoiser (deepinv, trained for sigma <= 50/255)", 128, 50 / 255),
}
ALIASES = {"diffunet": "diffunet-ffhq"}


def _load_external_weights(net: nn.Module, weights: Path) -> None:
    state = read_torch_file(weights)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights} holds a {type(state).__name__}, expected a state dict of weights")
    check_finite(weights, state)  # NaN weights loaded, and the reconstruction's NaN was blamed on the data
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of other shapes: torch raises for those even with strict=False
        shapes = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise CheckpointError(f"{weights} does not match the {type(net).__name__} architecture: "
                              f"{len(shapes)} tensor(s) of other shapes (e.g. {shapes[:2]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights} does not match the {type(net).__name__} architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})")


def load_deepinv_prior(model: str, weights=None, channels: int = 1, device=None) -> Prior:
    """A deepinv pretrained model as a :class:`Prior`.

    ``weights`` is a local file (for machines without internet); without it deepinv downloads the
    published weights into its cache. ``channels=1`` serves grayscale images from an RGB network.
    """
    key = ALIASES.get(model.lower(), model.lower())
    if key not in DEEPINV_MODELS:
        raise ValueError(f"unknown deepinv model {model!r}; known: {sorted(DEEPINV_MODELS)}")
    entry = DEEPINV_MODELS[key]
    if channels not in (1, entry.native_channels):
        raise ValueError(f"deepinv:{key} serves {entry.native_channels}-channel or grayscale images, not {channels} channels")
    net, denoiser = entry.build(dict(entry.architecture))
    if weights is not None:
        weights = Path(weights)
        _load_external_weights(net, weights)
        checksum = sha256_of(weights)
    else:
        checksum = _download_into(net, key, entry)
    if channels != entry.native_channels:
        denoiser = GrayscaleAdapter(denoiser, entry.native_channels)
    metadata = {"name": f"deepinv:{key}", "training_data": entry.training_data, "channels": channels,
                "sigma_min": 0.002 if entry.sigma_max > 1 else 1 / 255, "sigma_max": entry.sigma_max,
                "resolution": entry.resolution, "checksum": checksum, "architecture": type(net).__name__,
                "n_params": sum(p.numel() for p in net.parameters()), "weights": str(weights) if weights else "download"}
    return Prior(denoiser, metadata, multiple=8).to(device or "cpu")


def _download_into(net: nn.Module, key: str, entry: ExternalModel) -> str:
    """Let deepinv fetch its published weights (its own cache and URLs), then copy them into ``net``."""
    logger.info("downloading deepinv weights for %s", key)
    try:
        reference, _ = entry.build(dict(entry.architecture), pretrained=entry.download)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; offline hosts end here
        raise ConnectionError(f"could not download the deepinv weights for {key} ({error}); on a machine "
                              f"without internet pass a local file: 'deepinv:{key}@/path/to/weights'") from error
    net.load_state_dict(reference.state_dict())
    return f"deepinv-download:{key}:{entry.download}"


# ----------------------------------------------------------------------------- diffusers
def is_diffusers_folder(path) -> bool:
    """A UNet2DModel folder (config.json) or a pipeline folder with a ``unet`` subfolder."""
    path = Path(path)
    return path.is_dir() and ((path / "config.json").is_file() or (path / "unet" / "config.json").is_file())


def load_diffusers_prior(folder, channels: int | None = None, device=None) -> Prior:
    """A diffusers ``UNet2DModel`` folder (epsilon prediction, linear DDPM betas from its scheduler)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"  # a pipeline folder: its scheduler sits next to the unet
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise ImportError(f"{folder} looks like a diffusers model, but diffusers is not installed "
                          "(pip install 'diffrecon[diffusers]')") from error
    try:
        unet = UNet2DModel.from_pretrained(folder)
    except Exception as error:
        raise CheckpointError(f"{folder} is not a loadable diffusers UNet2DModel folder: {error}") from error
    check_finite(folder, unet.state_dict())
    alphas_cumprod = _diffusers_alphas(folder)
    native = unet.config.in_channels
    adapter = VPNoisePredictorAdapter(lambda x_t, t: unet(x_t, t).sample, alphas_cumprod, channels=native,
                                      pad_multiple=2 ** (len(unet.config.block_out_channels) - 1))
    adapter.net = unet
    channels = native if channels is None else channels
    denoiser = adapter if channels == native else GrayscaleAdapter(adapter, native)
    weight_files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    metadata = {"name": f"diffusers:{folder.name}", "training_data": "unknown (diffusers UNet2DModel)",
                "channels": channels, "sigma_min": 0.002, "sigma_max": float(((1 - alphas_cumprod[-1]) / alphas_cumprod[-1]).sqrt() / 2),
                "resolution": unet.config.sample_size, "checksum": sha256_of(weight_files[0]) if weight_files else "",
                "architecture": "diffusers.UNet2DModel", "n_params": sum(p.numel() for p in unet.parameters())}
    return Prior(denoiser, metadata, multiple=8).to(device or "cpu")


def _diffusers_alphas(folder: Path) -> torch.Tensor:
    """The DDPM schedule from ``scheduler_config.json`` next to (or above) the UNet, else the default."""
    import json

    for candidate in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            if config.get("beta_schedule", "linear") != "linear":
                raise ValueError(f"{candidate}: only the linear beta schedule is supported, got {config['beta_schedule']!r}")
            return vp_alphas_cumprod(config.get("beta_start", 1e-4), config.get("beta_end", 2e-2), config.get("num_train_timesteps", 1000))
    return vp_alphas_cumprod()
