"""The prior as methods see it: ``denoise(x, sigma)`` that counts network evaluations.

Two jobs, kept out of the methods so each stays a page of algorithm:

* count network evaluations honestly: every image pushed through the network is counted, and
  ``per_sample`` divides by the number of samples (and by the channel fold below), so K samples run
  as one batch of 20 steps report 20;
* complex MRI images (2 channels: real, imaginary) with a 1-channel prior: the prior is applied to the
  real and the imaginary part separately by folding the channels into the batch axis.
"""

from __future__ import annotations

import torch


class CountingDenoiser:
    """Wrap a ``Prior`` (a deepinv ``Denoiser``) for images with ``image_channels`` channels."""

    def __init__(self, prior, image_channels: int):
        self.prior = prior
        prior_channels = int(getattr(prior, "channels", image_channels))
        self.fold = image_channels // prior_channels if image_channels != prior_channels else 1
        self.images_evaluated = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        batch, channels = x.shape[:2]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        if self.fold > 1:
            x = x.reshape(batch * self.fold, channels // self.fold, *x.shape[2:])
            sigma = sigma.repeat_interleave(self.fold)
        out = self.prior(x, sigma)
        self.images_evaluated += x.shape[0]
        return out.reshape(batch, channels, *out.shape[2:])

    def per_sample(self, n_samples: int) -> float:
        """Network evaluations per sample so far (images evaluated / (samples x fold))."""
        return self.images_evaluated / float(max(n_samples, 1) * self.fold)
