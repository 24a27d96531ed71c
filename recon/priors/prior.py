"""``Prior``: a noise-conditional denoiser D(x, sigma) with metadata, in deepinv's Denoiser interface.

Why one wrapper for all networks: methods only ever call ``prior(x, sigma)`` with images in [0, 1]
and sigma in the same units, whether the network is ours or an adapted external one, so every
sampler (ours or deepinv's DPS/DiffPIR) works with every prior.
"""

from __future__ import annotations

import torch
from deepinv.models import Denoiser

from recon.methods.checks import check_number

METADATA_KEYS = ("name", "training_data", "channels", "sigma_min", "sigma_max", "resolution", "checksum",
                 "architecture", "n_params")


def sigma_range(metadata: dict) -> dict:
    """``sigma_min`` and ``sigma_max`` as floats with 0 < min < max, else ``ValueError``: the samplers'
    schedules start from them, so a crafted or damaged value would silently change every run."""
    values = {key: check_number(f"prior metadata {key}", metadata[key], 0.0, low_inclusive=False)
              for key in ("sigma_min", "sigma_max")}
    if values["sigma_min"] >= values["sigma_max"]:
        raise ValueError(f"prior metadata sigma_min {values['sigma_min']} is not below sigma_max {values['sigma_max']}")
    return values


class Prior(Denoiser):
    """Wrap a network ``net(x, sigma_tensor)`` that maps [0, 1] images to denoised [0, 1] images.

    Parameters
    ----------
    net : torch.nn.Module
        Called as ``net(x, sigma)`` with ``x`` (B, C, H, W) and ``sigma`` a (B,) tensor.
    metadata : dict
        Must hold at least ``METADATA_KEYS``.
    multiple : int
        Image height and width must be multiples of this (the network's downsampling factor).
    """

    def __init__(self, net: torch.nn.Module, metadata: dict, multiple: int = 8):
        super().__init__()
        missing = [k for k in METADATA_KEYS if k not in metadata]
        if missing:
            raise ValueError(f"prior metadata lacks {missing}")
        self.net = net
        self.metadata = {**metadata, **sigma_range(metadata)}
        self.channels = int(metadata["channels"])
        self.multiple = int(multiple)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for a shape this prior cannot denoise."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"prior {self.name!r} expects a (B, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.channels:
            raise ValueError(f"prior {self.name!r} has {self.channels} channel(s) but the image has {x.shape[1]}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"prior {self.name!r} needs height and width multiples of {self.multiple}, got {tuple(x.shape[-2:])}")

    def forward(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        """Denoised estimate of ``x`` at noise std ``sigma`` (float or (B,) tensor, [0, 1] image units)."""
        self.check_input(x)
        # the network runs on its own device and in its own precision (deepinv's DPS works in
        # float64; a CUDA prior may be handed CPU tensors); the result comes back like ``x``
        weights = next(self.net.parameters())
        sigma = self._handle_sigma(sigma, batch_size=x.shape[0], device=weights.device, dtype=weights.dtype)
        if (sigma <= 0).any():
            raise ValueError("sigma must be positive")
        return self.net(x.to(device=weights.device, dtype=weights.dtype), sigma).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, n_params={self.metadata['n_params']}"


def score(prior: Denoiser, x: torch.Tensor, sigma) -> torch.Tensor:
    """Score of the noisy-image density by Tweedie's formula: (D(x, sigma) - x) / sigma**2."""
    denoised = prior(x, sigma)
    s = Denoiser._handle_sigma(sigma, batch_size=x.shape[0], reference_tensor=x)
    return (denoised - x) / s**2
