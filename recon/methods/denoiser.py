"""The prior as methods see it: ``denoise(x, sigma)``, the one place the network runs.

Five jobs, kept out of the methods so each stays a page of algorithm:

* memory: the K samples a method passes are split into network calls of ``chunk_size`` samples
  (default ``batching.samples_per_call``: all at once on CUDA, cache-sized on the CPU), so a method
  always works on all K samples at once;
* count network evaluations honestly: every image pushed through the network is counted, and
  ``per_sample`` divides by the number of samples (and by the channel fold below), so K samples run
  as one batch of 20 steps report 20;
* complex MRI images (2 channels: real, imaginary) with a 1-channel prior: the prior is applied to the
  real and the imaginary part separately by folding the channels into the batch axis;
* any image size: the network only takes heights and widths that are multiples of its downsampling
  factor (``prior.multiple``), so a scan 60 pixels wide is padded to 64 for the call and cropped back.
  Reflect padding keeps the border statistics image-like (no flat bands for the denoiser to "fix");
  replicate is the fallback where the image is too small to reflect;
* arithmetic: on a CPU that computes bfloat16 natively (AVX-512 BF16 or AMX), inference runs under
  bfloat16 autocast, 1.5-2.8x faster than float32 at 128 px for a relative change of the output below
  0.1 % (docs/speed.md). Every CPU inference call, float32 too, runs with the network's weights and
  the images in channels-last order: 1.25-1.4x faster in float32 on a CPU without bfloat16 (same
  values to float32 rounding, about 1e-6). Normalisations and
  reductions stay float32 (autocast's rules); anything that needs gradients (steering's misfit
  objective, genreg's optimiser) runs in float32, and so does every CUDA call. Steering's denoising
  training (``self_training.py``) runs under bfloat16 autocast itself unless ``precision="float32"``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from recon.methods.batching import samples_per_call

#: ``precision`` values: "auto" (bfloat16 for CPU inference where the CPU computes it natively, else
#: float32), "float32", "bfloat16" (CPU inference in bfloat16 even where it is emulated, slowly).
PRECISIONS = ("auto", "float32", "bfloat16")


def check_precision(precision) -> None:
    """Refuse a ``precision`` that is not one of :data:`PRECISIONS`, before any work."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """``x`` padded on both sides of H and W to multiples of ``multiple``, and the crop that undoes it."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x, None
    top, left = pad_h // 2, pad_w // 2
    bottom, right = pad_h - top, pad_w - left
    # reflect needs each pad smaller than the side it mirrors
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
    padded = F.pad(x, (left, right, top, bottom), mode=mode)
    return padded, (slice(top, top + h), slice(left, left + w))


class CountingDenoiser:
    """Wrap a ``Prior`` (a deepinv ``Denoiser``) for images with ``image_channels`` channels.

    ``chunk_size``: samples per network call; ``None`` for ``batching.samples_per_call``.
    ``precision``: one of :data:`PRECISIONS`. For the duration of a CPU inference call the prior's
    weights are in channels-last order (oneDNN's fast layout; :meth:`channels_last`), and back in their
    own order afterwards: the prior is left as it was given, whoever else calls it.
    ``precisions_used`` records which arithmetic the calls so far ran in.
    """

    def __init__(self, prior, image_channels: int, chunk_size: int | None = None, precision: str = "auto"):
        check_precision(precision)
        self.prior = prior
        self.precision = precision
        self.precisions_used: set = set()
        prior_channels = int(getattr(prior, "channels", image_channels))
        self.fold = image_channels // prior_channels if image_channels != prior_channels else 1
        self.multiple = max(int(getattr(prior, "multiple", 8) or 1), 1)
        self.chunk_size = chunk_size
        self.images_evaluated = 0
        self.layout_fallback = False  # set when the prior failed in channels-last layout

    def samples_per_call(self, x: torch.Tensor) -> int:
        """How many of the samples in ``x`` go through the network together."""
        return min(self.chunk_size or samples_per_call(x.device, x.shape[1:], x.shape[0]), x.shape[0])

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        size = self.samples_per_call(x)
        if size >= x.shape[0]:
            return self._evaluate(x, sigma)
        return torch.cat([self._evaluate(x[i : i + size], sigma[i : i + size]) for i in range(0, x.shape[0], size)])

    def _evaluate(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if self.fold > 1:
            x = x.reshape(batch * self.fold, channels // self.fold, *x.shape[2:])
            sigma = sigma.repeat_interleave(self.fold)
        padded, crop = pad_to_multiple(x, self.multiple)
        out = self._network(padded, sigma)
        if crop is not None:
            out = out[..., crop[0], crop[1]]
        self.images_evaluated += x.shape[0]
        return out.reshape(batch, channels, *out.shape[2:])

    def uses_bfloat16(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs in bfloat16: CPU float32 inference, ``precision`` permitting."""
        if self.precision == "float32" or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        return self.precision == "bfloat16" or native_bfloat16()

    def channels_last(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs in channels-last layout: CPU inference (no gradients) of a module prior."""
        return (isinstance(self.prior, torch.nn.Module) and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not self.layout_fallback)

    def _network(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        bfloat16 = self.uses_bfloat16(x)
        self.precisions_used.add("bfloat16" if bfloat16 else str(x.dtype).removeprefix("torch."))
        if self.channels_last(x):
            self.prior.to(memory_format=torch.channels_last)  # same values, oneDNN's fast layout
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                    out = self.prior(x.contiguous(memory_format=torch.channels_last), sigma)
                return out.to(x.dtype).contiguous()
            except RuntimeError:  # a network that views its tensors as contiguous: its own layout from now on
                self.layout_fallback = True
            finally:
                self.prior.to(memory_format=torch.contiguous_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            return self.prior(x, sigma).to(x.dtype)

    def per_sample(self, n_samples: int) -> float:
        """Network evaluations per sample so far (images evaluated / (samples x fold))."""
        return self.images_evaluated / float(max(n_samples, 1) * self.fold)
