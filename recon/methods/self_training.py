"""Steering by denoising: teach the prior the scan's own reconstruction (test-time self-training).

The misfit objective of ``steering.py`` moves the adapters until the denoised estimate fits the
measured values. At 30 views or 4x there are fewer measured values than adapter weights, so it fits
them without predicting held-out data any better (docs/steering.md). This objective trains the
adapters the way the prior itself was trained, by denoising score matching, on a first
reconstruction of the scan: noisy copies of it must denoise back to it. A prior trained on other
anatomy or another contrast so learns this scan's structures and intensities, at the noise levels
where the reconstruction can be trusted. Below ``sigma_floor`` (the scale of the reconstruction's own
errors) the adapted prior is held to the shipped prior's output instead, so the reconstruction's
artefacts are not learnt as detail.

Training runs on random patches (``patch`` pixels square, flipped at random): the network is
convolutional, and a 64 px patch costs a quarter of a 128 px image. On a CPU that computes bfloat16
natively it runs under bfloat16 autocast, as inference does (``denoiser.py``); the adapters stay
float32. The generator is seeded, so a seed fixes the adapters.
"""

from __future__ import annotations

import math

import torch

from recon.methods.adapters import adapter_count, with_adapters
from recon.methods.denoiser import native_bfloat16, pad_to_multiple
from recon.progress import Step, Steps

#: Lowest training noise level: below it both targets agree to within the network's own error.
SIGMA_LOWEST = 0.005
#: Loss weight ``1 / max(sigma, WEIGHT_FLOOR)^2``: each noise level counts alike, the lowest not without bound.
WEIGHT_FLOOR = 0.02
#: Progress is reported every this many training steps.
REPORT_EVERY = 25


def _as_prior_images(images: torch.Tensor, prior_channels: int) -> torch.Tensor:
    """``(N, C, H, W)`` images as the prior's ``prior_channels``-channel images (complex MRI: real and imaginary apart)."""
    n, channels = images.shape[:2]
    if channels == prior_channels:
        return images
    return images.reshape(n * channels // prior_channels, prior_channels, *images.shape[2:])


def _patches(images: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` patches of ``images`` (N, C, H, W), each flipped left-right at random."""
    h, w = images.shape[-2:]
    picks = torch.randint(images.shape[0], (count,), generator=generator).tolist()
    rows = torch.randint(h - size + 1, (count,), generator=generator).tolist()
    cols = torch.randint(w - size + 1, (count,), generator=generator).tolist()
    flips = torch.rand(count, generator=generator).lt(0.5).tolist()
    out = []
    for k, i, j, flip in zip(picks, rows, cols, flips):
        patch = images[k, :, i : i + size, j : j + size]
        out.append(patch.flip(-1) if flip else patch)
    return torch.stack(out)


def patch_size(images: torch.Tensor, wanted: int, multiple: int) -> int:
    """The training patch side: ``wanted``, at most the images' shorter side, a multiple of the network's ``multiple``."""
    side = min(int(wanted), *images.shape[-2:])
    return max((side // multiple) * multiple, 0)


def train_adapters(prior, images: torch.Tensor, options, seed: int, precision: str = "auto") -> Steps:
    """Fit rank-``options.rank`` adapters on ``prior`` by denoising ``images`` (see the module docstring).

    ``images``: ``(N, C, H, W)`` reconstructions in the prior's units. Returns ``(adapted, parameters,
    report)``: the prior with adapters (``adapters.merged`` folds them in), the adapter weights, and
    what the training did for the metadata. ``precision`` as the denoiser's (``denoiser.PRECISIONS``):
    "float32" keeps the training in float32 on every CPU. A step generator: one step every
    :data:`REPORT_EVERY` training steps.
    """
    if options.sigma_floor is None or options.rank is None:
        raise ValueError("train_adapters needs a rank and a sigma_floor: set them, or take the operator's with "
                         "AdaptOptions.for_operator")
    adapted, parameters = with_adapters(prior, options.rank, seed)
    adapted.train(False)
    device = images.device
    images = _as_prior_images(images.detach(), int(getattr(prior, "channels", images.shape[1])))
    multiple = max(int(getattr(prior, "multiple", 8) or 1), 1)
    size = patch_size(images, options.patch, multiple)
    if size == 0:  # smaller than one network block: train on the padded whole image
        images, _ = pad_to_multiple(images, multiple)
        size = min(images.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=options.step_size)
    low, high = math.log(SIGMA_LOWEST), math.log(options.sigma_ceiling)
    bfloat16 = device.type == "cpu" and precision != "float32" and (precision == "bfloat16" or native_bfloat16())
    losses = []
    for step in range(options.train_steps):
        clean = _patches(images, size, options.batch, generator).to(device)
        sigma = (low + (high - low) * torch.rand(options.batch, generator=generator)).exp().to(device)
        noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=generator).to(device)
        with torch.enable_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                with torch.no_grad():  # below the floor the target is the shipped prior's own output
                    fine = sigma < options.sigma_floor
                    target = clean
                    if bool(fine.any()):  # the shipped prior runs on those patches only
                        target = clean.clone()
                        target[fine] = prior(noisy[fine], sigma[fine]).float()
                denoised = adapted(noisy, sigma).float()
                weight = sigma.clamp_min(WEIGHT_FLOOR).pow(-2)
                loss = ((denoised - target).pow(2).flatten(1).mean(1) * weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # outside autocast, as torch advises
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % REPORT_EVERY == 0 or step + 1 == options.train_steps:
            yield Step(step + 1, options.train_steps)
    head, tail = losses[:REPORT_EVERY], losses[-REPORT_EVERY:]
    report = {"objective": "denoising", "adapter_values": adapter_count(parameters), "rank": options.rank,
              "lr": options.step_size, "sigma_floor": options.sigma_floor, "sigma_ceiling": options.sigma_ceiling,
              "train_steps": options.train_steps,
              "patch": size, "backward_passes": options.train_steps * options.batch,
              "backward_pixels": options.train_steps * options.batch * size * size,
              "precision": "bfloat16" if bfloat16 else "float32",
              "loss_first_steps": sum(head) / len(head), "loss_last_steps": sum(tail) / len(tail)}
    return adapted, parameters, report
