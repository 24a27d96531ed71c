"""``recon demo``: a sparse-view CT study built from built-in data, reconstructed in batch, and a figure.

What it does, in ``OUT``:

1. ``demo_ct.h5``: held-out CT images (never seen by the built-in prior; scikit-image's
   Shepp-Logan phantom where the prior package is missing), their 30-view parallel-beam sinograms
   with 1% Gaussian noise, in the batch's native layout (:func:`write_native_ct`);
2. ``fbp/demo_ct.h5`` and ``<method>/demo_ct.h5``: ``recon batch`` outputs, the baseline and the
   diffusion method (ccdf by default);
3. ``demo.png``: ground truth, FBP, the method's posterior mean and its std, one row per image;
4. a PSNR/SSIM table, printed and saved as ``psnr.txt``.

It is what ``bash scripts/demo.sh`` runs, and finishes in a few minutes on two CPU cores.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

DATASET_NAME = "demo_ct.h5"


def example_images(n_images: int, size: int) -> tuple[np.ndarray, str]:
    """``n_images`` held-out CT images ``(N, size, size)`` in [0, 1], and where they came from."""
    try:
        from recon.priors.data import held_out_images

        images = np.asarray(held_out_images("ct", size), dtype=np.float32)
        if len(images) >= n_images:
            return images[:n_images], "recon.priors.data.held_out_images('ct')"
        logger.warning("only %d held-out CT images; filling up with Shepp-Logan phantoms", len(images))
        extra = _shepp_logan_variants(n_images - len(images), size)
        return np.concatenate([images, extra]), "held-out CT images + Shepp-Logan variants"
    except (ImportError, AttributeError) as err:  # prior package not available
        logger.warning("held-out CT images unavailable (%s); using Shepp-Logan phantoms", err)
        return _shepp_logan_variants(n_images, size), "scikit-image Shepp-Logan variants"


def _shepp_logan_variants(n_images: int, size: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize, rotate

    base = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return np.stack([np.clip(rotate(base, 15 * i), 0, 1) for i in range(n_images)]).astype(np.float32)


def write_native_ct(path: str, images: np.ndarray, n_angles: int = 30, noise: float = 0.01, seed: int = 0) -> str:
    """Write sparse-view parallel-beam sinograms of ``images`` ``(N, H, W)`` in the native batch layout.

    The noise is Gaussian with std ``noise`` times the largest sinogram value; that std is stored as
    ``noise_sigma`` so that the methods know it.
    """
    import h5py
    import torch

    from operators import ParallelBeamCT

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images should be (N, H, W), got shape {images.shape}")
    physics = ParallelBeamCT(images.shape[-2:], n_angles=n_angles)
    with torch.no_grad():
        clean = physics.A(torch.from_numpy(images)[:, None]).numpy()[:, 0]
    sigma = float(noise * np.abs(clean).max())
    rng = np.random.default_rng(seed)
    noisy = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("measurement", data=noisy)
        f.create_dataset("ground_truth", data=images)
        f.attrs.update({"operator": "parallel_beam_ct", "image_size": list(images.shape[-2:]), "n_angles": n_angles,
                        "n_detectors": int(noisy.shape[-1]), "noise_sigma": sigma,
                        "description": f"{n_angles}-view parallel-beam CT, {noise:.0%} Gaussian noise"})
    return path


def _prior_available() -> Optional[str]:
    """None if the built-in CT prior loads, else why not."""
    try:
        from recon.priors import load_prior

        load_prior("ct", device="cpu")
        return None
    except Exception as err:  # noqa: BLE001 - any failure means: fall back, and say why
        return f"{type(err).__name__}: {err}"


def _scores(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return f["mean"][:, 0], f["std"][:, 0], f["psnr"][()], f["ssim"][()]


def write_figure(path: str, truth: np.ndarray, fbp: np.ndarray, mean: np.ndarray, std: np.ndarray, method: str,
                 psnr_fbp, psnr_method) -> str:
    """PNG: one row per image, columns ground truth, FBP, posterior mean, std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(truth)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for row in range(rows):
        panels = [(truth[row], "ground truth", "gray"), (fbp[row], f"FBP  {psnr_fbp[row]:.1f} dB", "gray"),
                  (mean[row], f"{method} mean  {psnr_method[row]:.1f} dB", "gray"), (std[row], f"{method} std", "magma")]
        for col, (image, title, cmap) in enumerate(panels):
            ax = axes[row, col]
            limits = (0, 1) if cmap == "gray" else (0, float(np.percentile(image, 99.5)) or 1)
            ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1])
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: str = "demo_output", method: str = "ccdf", n_images: int = 4, size: int = 128, n_angles: int = 30,
             steps: Optional[int] = None, samples: int = 4, workers: int = 0, noise: float = 0.01) -> str:
    """Build the example study, run ``recon batch`` with fbp and ``method``, write table and figure."""
    from recon.batch.runner import run

    from recon.methods.checks import check_int, check_number, check_positive_int

    # every number checked before the folder or the study is made: no half-made demo for a typo
    check_positive_int("--n-images", n_images)
    check_positive_int("--samples", samples)
    check_positive_int("--n-angles", n_angles)
    if steps is not None:
        check_positive_int("--steps", steps)
    check_int("--workers", workers, 0, 1024)
    check_number("noise", noise, 0.0)
    if check_positive_int("--size", size) < 16:
        raise ValueError(f"--size must be at least 16, got {size}")
    os.makedirs(out, exist_ok=True)
    images, source = example_images(n_images, size)
    dataset = write_native_ct(os.path.join(out, DATASET_NAME), images, n_angles=n_angles, noise=noise)
    notes = [f"dataset: {dataset} ({len(images)} images from {source}, {size}x{size}, {n_angles} views, "
             f"{noise:.0%} noise)"]
    if method != "fbp":
        why = _prior_available()
        if why is not None:
            notes.append(f"NOTE: the built-in CT prior is not available ({why}); showing fbp only")
            method = "fbp"
    # one torch thread per slice (the batch default): on a busy 2-core machine more threads were
    # several times slower, not faster
    common = {"workers": workers, "progress": None, "overwrite": True}
    fbp_summary = run([dataset], os.path.join(out, "fbp"), method="fbp", **common)
    summaries = [fbp_summary]
    if method != "fbp":
        summaries.append(run([dataset], os.path.join(out, method), method=method, samples=samples,
                             steps=steps, **common))
    fbp_mean, _, fbp_psnr, fbp_ssim = _scores(fbp_summary.outputs[0])
    mean, std, psnr, ssim = _scores(summaries[-1].outputs[0])
    lines = [f"{'slice':>5} | {'FBP PSNR':>9} {'SSIM':>6} | {method + ' PSNR':>10} {'SSIM':>6}"]
    for i in range(len(images)):
        lines.append(f"{i:>5} | {fbp_psnr[i]:9.2f} {fbp_ssim[i]:6.3f} | {psnr[i]:10.2f} {ssim[i]:6.3f}")
    lines.append(f"{'mean':>5} | {np.nanmean(fbp_psnr):9.2f} {np.nanmean(fbp_ssim):6.3f} | "
                 f"{np.nanmean(psnr):10.2f} {np.nanmean(ssim):6.3f}")
    table = "\n".join(lines)
    with open(os.path.join(out, "psnr.txt"), "w") as handle:
        handle.write(table + "\n")
    figure = write_figure(os.path.join(out, "demo.png"), images, fbp_mean, mean, std, method, fbp_psnr, psnr)
    outputs = ", ".join(s.outputs[0] for s in summaries)
    seconds = sum(s.seconds for s in summaries)
    failed = sum(s.failed for s in summaries)
    return "\n".join(notes + [table, f"outputs: {outputs}; figure: {figure}; {seconds:.0f} s"
                              + (f"; {failed} slice(s) FAILED (see the log)" if failed else "")])
