"""The GPU goals of docs/speed.md in one short run (well under ten minutes on one GPU).

GPU time is scarce, so this script is prepared to run once, unattended, wherever a GPU is lent:

1. **CT 256 x 256**, 30 parallel views, Gaussian noise of 1 % of ``max |A x|``, ccdf with every
   default, K = 8, on the GPU (ASTRA's CUDA projector): wall time per slice, median over slices
   after one warm-up run (goal: under 0.25 s), and PSNR.
2. **A multi-coil MRI volume**: 35 slices of 320 x 320, 15 coils (smooth synthetic sensitivities),
   4x Cartesian random mask with 8 % centre, complex images, ccdf K = 8 per slice: wall time for the
   whole volume (goal: under 30 s).
3. **CPU against GPU**: the first CT slice reconstructed on both with the same seed; the difference
   of the means (RMS, max) and of their PSNR. The samples draw their noise on each device's own
   generator, so the two means are two draws of the same estimator: agreement is within the spread
   of the K = 8 mean, which the std map gives (the run prints its RMS beside the difference).

The images are held-out real slices where the real-scan packages are installed
(``scripts/setup_scans.sh``), else scikit-image's Shepp-Logan variants (the timing does not depend on
which). Every figure is printed as one JSON line and as a table; ``--out`` also writes the JSON.

    python benchmarks/gpu_goals.py --out gpu_goals.json
    python benchmarks/gpu_goals.py --device cpu --ct-slices 1 --mri-slices 1 --mri-size 64   # a dry run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import coil_maps  # noqa: E402

GOALS = {"ct256_k8_s": 0.25, "mri_volume_k8_s": 30.0}


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((np.clip(estimate, 0, 1) - truth) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ct_images(size: int, n: int) -> tuple[np.ndarray, str]:
    try:
        from recon.priors.data import real_images

        return real_images("ct-head", size)[:n], "held-out real head-CT slices"
    except Exception:  # noqa: BLE001 - the scan packages are not installed on every machine
        from recon.demo import _shepp_logan_variants

        return _shepp_logan_variants(n, size), "Shepp-Logan variants"


def mr_images(size: int, n: int) -> tuple[np.ndarray, str]:
    try:
        from recon.priors.data import real_images

        stack = real_images("mri-head", size)
        return np.stack([stack[i % len(stack)] for i in range(n)]), "held-out real T1 slices, repeated"
    except Exception:  # noqa: BLE001
        from recon.demo import _shepp_logan_variants

        return _shepp_logan_variants(n, size), "Shepp-Logan variants"


def ct_goal(device: str, size: int, n_slices: int, samples: int) -> tuple[dict, list]:
    from operators import ParallelBeamCT
    from recon import reconstruct

    truths, source = ct_images(size, n_slices)
    physics = ParallelBeamCT(size, n_angles=30)
    generator = torch.Generator().manual_seed(0)
    data = []
    for truth in truths:
        clean = physics.A(torch.from_numpy(truth)[None, None])
        sigma = 0.01 * float(clean.abs().max())
        data.append((clean + sigma * torch.randn(clean.shape, generator=generator), sigma, truth))
    y, sigma, _ = data[0]
    reconstruct(y, physics, prior="ct", n_samples=samples, noise_sigma=sigma, device=device)  # warm-up
    times, scores, results = [], [], []
    for index, (y, sigma, truth) in enumerate(data):
        synchronise(device)
        start = time.perf_counter()
        result = reconstruct(y, physics, prior="ct", n_samples=samples, noise_sigma=sigma, seed=index, device=device)
        synchronise(device)
        times.append(time.perf_counter() - start)
        scores.append(psnr(result.mean[0], truth))
        results.append(result)
    row = dict(goal="ct256", device=device, size=size, views=30, samples=samples, slices=len(data), images=source,
               seconds_median=statistics.median(times), seconds=times, psnr=scores,
               network_images=results[0].metadata["n_network_evals"],
               data_consistency=results[0].metadata["data_consistency"],
               network_precision=results[0].metadata["network_precision"])
    return row, [(physics, data[0], results[0])]


def mri_goal(device: str, size: int, n_slices: int, n_coils: int, samples: int) -> dict:
    from operators import CartesianMRI
    from recon import reconstruct

    truths, source = mr_images(size, n_slices)
    maps = coil_maps(n_coils, size)
    physics = CartesianMRI(size, acceleration=4, center_fraction=0.08, seed=0, coil_maps=maps, complex_images=True)
    measurements = [physics.A(torch.from_numpy(np.stack([t, np.zeros_like(t)]))[None]) for t in truths]
    reconstruct(measurements[0], physics, prior="mri", n_samples=samples, device=device)  # warm-up
    synchronise(device)
    start = time.perf_counter()
    scores, shared = [], {}
    for y, truth in zip(measurements, truths):  # as recon batch: the first slice calibrates, the others reuse its choice
        result = reconstruct(y, physics, prior="mri", n_samples=samples, seed=0, device=device, **shared)
        shared = {"choice": result.choice}
        scores.append(psnr(np.sqrt((result.mean.astype(np.float64) ** 2).sum(0)), truth))
    synchronise(device)
    seconds = time.perf_counter() - start
    return dict(goal="mri_volume", device=device, size=size, coils=n_coils, slices=n_slices, samples=samples,
                images=source, seconds=seconds, seconds_per_slice=seconds / n_slices, calibration="once per volume",
                psnr_mean=float(np.mean(scores)), data_consistency=result.metadata["data_consistency"])


def agreement(device: str, case, samples: int) -> dict:
    """The same CT slice on the CPU and on ``device``: the means' difference against the spread two independent
    means of K samples would have (the samples' own std times sqrt(2 / K), not the calibrated std map)."""
    from recon import reconstruct
    from recon.uncertainty import std_map

    physics, (y, sigma, truth), on_device = case
    on_cpu = reconstruct(y, physics, prior="ct", n_samples=samples, noise_sigma=sigma, seed=0, device="cpu")
    difference = on_device.mean - on_cpu.mean
    std_of_difference = std_map(on_cpu.samples, pooling=0) * math.sqrt(2 / samples)
    return dict(goal="cpu_gpu_agreement", device=device, rms_difference=float(np.sqrt(np.mean(difference**2))),
                max_difference=float(np.abs(difference).max()),
                rms_std_of_difference=float(np.sqrt(np.mean(std_of_difference**2))),
                psnr_device=psnr(on_device.mean[0], truth), psnr_cpu=psnr(on_cpu.mean[0], truth),
                precision_cpu=on_cpu.metadata["network_precision"])


def table(rows: list) -> str:
    by = {row["goal"]: row for row in rows}
    lines = ["| goal | measured | target |", "|---|---|---|"]
    if "ct256" in by:
        r = by["ct256"]
        lines.append(f"| CT {r['size']} px, 30 views, ccdf K = {r['samples']} | {r['seconds_median']:.3f} s per slice "
                     f"(median of {r['slices']}), PSNR {np.mean(r['psnr']):.2f} dB | < {GOALS['ct256_k8_s']} s |")
    if "mri_volume" in by:
        r = by["mri_volume"]
        lines.append(f"| MRI {r['slices']} x {r['size']} px, {r['coils']} coils, 4x, ccdf K = {r['samples']} | "
                     f"{r['seconds']:.1f} s ({r['seconds_per_slice']:.2f} s per slice) | < {GOALS['mri_volume_k8_s']:.0f} s |")
    if "cpu_gpu_agreement" in by:
        r = by["cpu_gpu_agreement"]
        lines.append(f"| CPU against {r['device']}, same CT slice and seed | RMS difference of the means "
                     f"{r['rms_difference']:.4f} (two independent means would differ by {r['rms_std_of_difference']:.4f}); PSNR "
                     f"{r['psnr_device']:.2f} / {r['psnr_cpu']:.2f} dB | within that spread |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--ct-size", type=int, default=256)
    parser.add_argument("--ct-slices", type=int, default=5)
    parser.add_argument("--mri-size", type=int, default=320)
    parser.add_argument("--mri-slices", type=int, default=35)
    parser.add_argument("--coils", type=int, default=15)
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu for a dry run")
    if args.device.startswith("cuda"):
        print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = []

    def report(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))

    ct_row, cases = ct_goal(args.device, args.ct_size, args.ct_slices, args.samples)
    report(ct_row)
    report(mri_goal(args.device, args.mri_size, args.mri_slices, args.coils, args.samples))
    if not args.skip_agreement and args.device != "cpu":
        report(agreement(args.device, cases[0], args.samples))
    print(table(rows))


if __name__ == "__main__":
    main()
