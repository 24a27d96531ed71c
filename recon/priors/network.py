"""The small noise-conditional UNet and its EDM preconditioning.

Why this shape: the priors must train on a 2-core CPU in well under an hour, serve any image size
that is a multiple of 8 (fully convolutional, no attention) and stay accurate from sigma 0.002 up to
pure noise. EDM preconditioning (Karras et al. 2022, "Elucidating the design space of
diffusion-based generative models") keeps the network's input and target at unit variance at every
sigma, which is what lets such a small network cover that whole range.

Conventions: the network works on images centred to [-1, 1]; :class:`EDMDenoiser` takes and returns
images in [0, 1] with ``sigma`` in the same [0, 1] units, converting at its edge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

#: Standard deviation of the training images in the centred [-1, 1] range, EDM's sigma_data.
SIGMA_DATA = 0.5


@dataclass
class UNetConfig:
    """Architecture of :class:`NoiseConditionalUNet`; stored in every checkpoint to rebuild it."""

    channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    embedding_dim: int = 128
    groups: int = 8
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        counts = {"channels": self.channels, "blocks_per_level": self.blocks_per_level,
                  "embedding_dim": self.embedding_dim, "groups": self.groups}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.widths or any(w < 1 or w % self.groups for w in self.widths):
            raise ValueError(f"widths must be positive multiples of groups={self.groups}, got {list(self.widths)}")

    def to_dict(self) -> dict:
        config = asdict(self)
        config["widths"] = list(self.widths)
        return config

    @classmethod
    def from_dict(cls, config: dict) -> "UNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        values = dict(config)
        if "widths" in values:
            values["widths"] = tuple(int(w) for w in values["widths"])
        return cls(**values)


class NoiseEmbedding(nn.Module):
    """Fourier features of EDM's c_noise = log(sigma) / 4, then a small MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0.0, math.log(64.0), dim // 2)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise[:, None] * self.frequencies[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the noise embedding added between the convolutions."""

    def __init__(self, in_width: int, out_width: int, embedding_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_width), in_width)
        self.conv1 = nn.Conv2d(in_width, out_width, 3, padding=1)
        self.embed = nn.Linear(embedding_dim, out_width)
        self.norm2 = nn.GroupNorm(min(groups, out_width), out_width)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1)
        self.skip = nn.Conv2d(in_width, out_width, 1) if in_width != out_width else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(embedding)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class NoiseConditionalUNet(nn.Module):
    """F(x, c_noise): a plain UNet, one resolution level per entry of ``config.widths``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = config.widths
        self.multiple = 2 ** (len(widths) - 1)
        self.embedding = NoiseEmbedding(config.embedding_dim)
        self.stem = nn.Conv2d(config.channels, widths[0], 3, padding=1)

        def block(i, o):
            return ResidualBlock(i, o, config.embedding_dim, config.groups)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        width = widths[0]
        skip_widths = []
        for level, level_width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(block(width, level_width))
                width = level_width
            self.down.append(blocks)
            skip_widths.append(width)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = block(width, width)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for i in range(config.blocks_per_level):
                in_width = width + (skip_widths[level] if i == 0 else 0)
                blocks.append(block(in_width, widths[level]))
                width = widths[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(width, widths[level - 1], 3, padding=1))
                width = widths[level - 1]
        self.head_norm = nn.GroupNorm(min(config.groups, width), width)
        self.head = nn.Conv2d(width, config.channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(c_noise)
        h = self.stem(x)
        skips = []
        for level, blocks in enumerate(self.down):
            for b in blocks:
                h = b(h, embedding)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.middle(h, embedding)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for b in blocks:
                h = b(h, embedding)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(F.silu(self.head_norm(h)))


class EDMDenoiser(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), in [0, 1] image units at the interface."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.net = NoiseConditionalUNet(config)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` (B, C, H, W) in [0, 1] at noise std ``sigma`` (B,) in the same units."""
        x_c = 2.0 * x - 1.0
        s = (2.0 * sigma).to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        c_out = s * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt()
        c_in = 1.0 / (s**2 + SIGMA_DATA**2).sqrt()
        c_noise = s.flatten().log() / 4.0
        out = self.net(c_in * x_c, c_noise)
        denoised = c_skip * x_c + c_out * out.to(x.dtype)
        return (denoised + 1.0) / 2.0


def edm_loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM's lambda(sigma) for sigma in [0, 1] image units, so every sigma contributes at unit scale.

    The loss is measured on the centred [-1, 1] images; a [0, 1] error of ``e`` is ``2e`` there.
    """
    s = 2.0 * sigma
    return 4.0 * (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
