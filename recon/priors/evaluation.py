"""Denoising PSNR of a prior against tuned classical denoisers, on held-out images.

Why here: the model cards' table (``benchmarks/bench_priors.py``) and the quality test measure the
same thing, so both call these functions. The baselines get their parameter tuned per sigma on a
grid, choosing the value with the best mean PSNR on the very images being scored (an oracle choice,
so the comparison favours the baselines).
"""

from __future__ import annotations

import numpy as np
import torch

from recon import metrics

SIGMAS = (0.05, 0.1, 0.2, 0.5)
TV_WEIGHTS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.48, 0.64, 1.0, 1.5, 2.0)
NLM_H_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5)


def psnr(estimate: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1] (estimate clipped to that range)."""
    return metrics.psnr(estimate, target, data_range=1.0, clip=(0, 1))


def noisy_copies(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``images + sigma * noise`` with a fixed seed per (seed, sigma), not clipped."""
    rng = np.random.default_rng([seed, int(round(sigma * 1e6))])
    return (images + sigma * rng.standard_normal(images.shape)).astype(np.float32)


@torch.no_grad()
def prior_denoise(prior, noisy: np.ndarray, sigma: float) -> np.ndarray:
    """One call of D(y, sigma) on a stack (N, H, W)."""
    x = torch.from_numpy(noisy)[:, None].to(prior.device)
    return prior(x, float(sigma))[:, 0].clamp(0, 1).cpu().numpy()


def tuned(denoise, noisy: np.ndarray, clean: np.ndarray, grid) -> tuple[float, object, np.ndarray]:
    """Best mean PSNR of ``denoise(image, parameter)`` over ``grid``; returns (psnr, parameter, per-image PSNRs)."""
    best = (-np.inf, None, None)
    for parameter in grid:
        scores = np.array([psnr(denoise(n, parameter), c) for n, c in zip(noisy, clean)])
        if scores.mean() > best[0]:
            best = (float(scores.mean()), parameter, scores)
    return best


def tv_denoise(image: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=weight)


def nlm_denoise(image: np.ndarray, h: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)


def compare(prior, images: np.ndarray, sigmas=SIGMAS, seed: int = 0, nlm: bool = True) -> list[dict]:
    """One row per sigma: mean PSNR of the noisy input, the prior, tuned TV and tuned NL-means."""
    rows = []
    for sigma in sigmas:
        noisy = noisy_copies(images, sigma, seed)
        ours = np.array([psnr(d, c) for d, c in zip(prior_denoise(prior, noisy, sigma), images)])
        tv_psnr, tv_weight, tv_scores = tuned(tv_denoise, noisy, images, TV_WEIGHTS)
        row = {"sigma": sigma, "noisy": float(np.mean([psnr(n, c) for n, c in zip(noisy, images)])),
               "prior": float(ours.mean()), "prior_per_image": ours.tolist(),
               "tv": tv_psnr, "tv_weight": tv_weight, "tv_per_image": tv_scores.tolist()}
        if nlm:
            nlm_psnr, factor, nlm_scores = tuned(lambda n, f: nlm_denoise(n, f * sigma, sigma), noisy, images, NLM_H_FACTORS)
            row.update(nlm=nlm_psnr, nlm_h=factor * sigma, nlm_per_image=nlm_scores.tolist())
        rows.append(row)
    return rows
