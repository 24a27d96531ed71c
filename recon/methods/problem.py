"""`Problem`: everything a method needs, already mapped to the prior's range and on the device.

`recon.reconstruct` validates the inputs, maps intensities, builds the data-consistency step and the
denoiser, then hands the method one `Problem` for all K samples. Methods never see user units,
devices or memory chunking (the denoiser's). A problem is immutable: a variant (the fit data of
self-validation, a steered prior) is a new one, made with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from recon.methods.schedule import SIGMA_MAX, SIGMA_MIN


@dataclass(frozen=True)
class Problem:
    """A reconstruction problem in the prior's range.

    Attributes
    ----------
    physics : the linear forward operator
    y : measurement mapped to the prior's range, batch of one
    x_init : initial estimate in the prior's range, ``(1, C, H, W)``
    denoise : ``denoise(x, sigma)``, the prior (``None`` for fbp and tv)
    dc : ``dc(z, sigma)``, the data-consistency step (see ``data_consistency.py``)
    generator : the random stream of this run
    n_samples : how many samples to produce (K)
    noise_sigma : measurement noise std in the mapped measurement units
    sigma_min, sigma_max : the prior's noise range (the diffusion-time axis; schedules stop at ``SIGMA_END``)
    before_step : ``before_step(x, sigma, step)``, called by the reverse-diffusion loop before each
        network evaluation (test-time adaptation of the prior, ``steering.py``); ``None`` for none
    """

    physics: object
    y: torch.Tensor
    x_init: torch.Tensor
    denoise: Optional[Callable]
    dc: Callable
    generator: torch.Generator
    n_samples: int = 1
    noise_sigma: float = 0.0
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    before_step: Optional[Callable] = None

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch of one) repeated to ``n_samples`` as an independent tensor."""
        return x.expand(self.n_samples, *x.shape[1:]).clone()

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
