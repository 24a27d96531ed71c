"""Compare reconstruction methods on held-out images: PSNR, SSIM, network evaluations, wall time.

Tasks (images from ``recon.priors.data.held_out_images``, never used in training):

    ct30          parallel-beam CT, 30 views, noiseless           prior "ct"
    ct30_noise1   the same with Gaussian noise, std 1% of max|y|  prior "ct"
    mri4x, mri8x  Cartesian MRI, 4x and 8x undersampling          prior "mri"
    sr4           super-resolution x4 (bicubic)                   prior "natural"

Methods: fbp, tv (lambda tuned per task on a separate image), ccdf (auto t0), diffusion, genreg
(diffusion regulariser), and deepinv's DPS and DiffPIR run with the same prior and operator (DPS's
guidance weight and DiffPIR's lambda and zeta tuned per task on the same separate image).
ccdf's std is calibrated (``recon.uncertainty.calibrate``) on the separate image, and its 2-std
coverage is reported on the evaluation images. A t0 sweep checks the auto-t0 rule.

Wall times are measured in one run on the same machine, so compare them as ratios. Usage::

    python benchmarks/bench_methods.py --quick            # reduced run for a 2-core CPU
    python benchmarks/bench_methods.py --images 4 --sizes 128 256
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from rows import RowFile, add_arguments as add_row_arguments  # benchmarks/ is the script's folder

TASKS = {
    "ct30": dict(kind="ct", prior="ct", operator="ct", noise=0.0),
    "ct30_noise1": dict(kind="ct", prior="ct", operator="ct", noise=0.01),
    "mri4x": dict(kind="mri", prior="mri", operator="mri4", noise=0.0),
    "mri8x": dict(kind="mri", prior="mri", operator="mri8", noise=0.0),
    "sr4": dict(kind="natural", prior="natural", operator="sr4", noise=0.0),
}
TV_LAMBDAS = (0.001, 0.003, 0.01, 0.03)
T0_SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7)  # sigma(t0): 0.017 ... 12.4, see schedule.py


def build_operator(name: str, size: int):
    import operators

    if name == "ct":
        return operators.ParallelBeamCT(image_size=size, n_angles=30)
    if name.startswith("mri"):
        return operators.CartesianMRI(image_size=size, acceleration=int(name[3:]), center_fraction=0.08, seed=0)
    if name == "sr4":
        return operators.SuperResolution(image_size=size, factor=4)
    raise ValueError(name)


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    from recon.metrics import psnr as psnr_db

    return psnr_db(estimate, truth, data_range=1.0)


def ssim(estimate: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(estimate.astype(np.float64), truth.astype(np.float64), data_range=1.0))


class CountingDenoiser(torch.nn.Module):
    """Our prior as a deepinv ``Denoiser`` that counts evaluated images (for DPS and DiffPIR)."""

    def __init__(self, prior):
        super().__init__()
        self.prior = prior
        self.images = 0

    def forward(self, x, sigma, *args, **kwargs):
        self.images += x.shape[0]
        return self.prior(x.float(), sigma)


def run_deepinv(name: str, y, physics, prior, steps: int, noise: float, x_init, seed: int, dps_weight: float = 1.0,
                diffpir: dict | None = None, device: str = "cpu"):
    """deepinv's DPS or DiffPIR with our prior; returns (estimate (C, H, W), NFE, seconds)."""
    from deepinv.optim.data_fidelity import L2
    from deepinv.sampling import DPS, DiffPIR

    denoiser = CountingDenoiser(prior)
    physics = copy.deepcopy(physics).to(device)
    y, x_init = y.to(device), None if x_init is None else x_init.to(device)
    started = time.perf_counter()
    torch.manual_seed(seed)
    if name == "dps":
        model = DPS(denoiser, num_steps=steps, weight=dps_weight, device=device,
                    rng=torch.Generator(device).manual_seed(seed))
        x = model(y, physics, seed=seed)
    else:
        model = DiffPIR(denoiser, L2(), sigma=max(noise, 0.01), max_iter=steps, device=device, **(diffpir or {}))
        with torch.no_grad():
            x = model(y, physics, x_init=x_init)
    if device != "cpu":
        torch.cuda.synchronize()  # count the GPU work still queued
    seconds = time.perf_counter() - started
    return x.detach()[0].float().cpu().numpy(), denoiser.images / y.shape[0], seconds


def record(rows: RowFile, task, size, method, image, estimate, truth, nfe, seconds, **extra):
    row = dict(task=task, size=size, method=method, image=int(image), psnr=psnr(estimate[0], truth),
               ssim=ssim(estimate[0], truth), nfe=float(nfe), seconds=float(seconds), **extra)
    rows(row)
    return row


def tune_tv(y, physics, truth) -> float:
    from recon import reconstruct

    scores = {lam: psnr(reconstruct(y, physics, method="tv", lambda_tv=lam).mean[0], truth) for lam in TV_LAMBDAS}
    return max(scores, key=scores.get)


def tune_dps(y, physics, prior, truth, steps: int = 200, device: str = "cpu") -> float:
    """DPS guidance weight: a geometric search over ``10**(k/2) x ||A||`` on the calibration image, ``steps`` steps.

    Starts at k = -1 ... 3 (0.3 to 30) and extends the grid past whichever end wins until the best
    weight is interior (k within -8 ... 12): the best factor is ~0.3 for CT, ~300 for MRI and ~3000 for
    SR, so a fixed grid leaves DPS untuned on some task. The guidance is integrated over time, so the
    weight found with 200 steps carries over to 1000.
    """
    from recon.methods.baselines import operator_norm_sq

    norm = math.sqrt(operator_norm_sq(physics, physics.A_dagger(y)))
    scores = {}

    def score(k: int) -> None:
        if k not in scores:
            estimate, _, _ = run_deepinv("dps", y, physics, prior, steps, 0.0, None, seed=0,
                                         dps_weight=10 ** (k / 2) * norm, device=device)
            scores[k] = psnr(estimate[0], truth)

    for k in range(-1, 4):
        score(k)
    while True:
        best = max(scores, key=scores.get)
        if best == max(scores) and best < 12:
            score(best + 1)
        elif best == min(scores) and best > -8:
            score(best - 1)
        else:
            break
    print("# dps weight search (weight: PSNR):", {round(10 ** (k / 2) * norm, 3): round(v, 2) for k, v in sorted(scores.items())}, flush=True)
    return 10 ** (best / 2) * norm


DIFFPIR_GRID = [dict(lambda_=lam, zeta=zeta) for lam in (0.01, 0.1, 1.0, 10.0, 100.0) for zeta in (0.2, 0.5, 1.0)]


def tune_diffpir(y, physics, prior, truth, noise: float, steps: int, device: str = "cpu") -> dict:
    """DiffPIR's ``lambda_`` (data weight; deepinv's default 7) and ``zeta`` (0.1; 1 is fully stochastic) on the calibration image."""
    x_init = physics.A_dagger(y).clamp(0, 1)
    scores = []
    for options in DIFFPIR_GRID:
        estimate, _, _ = run_deepinv("diffpir", y, physics, prior, steps, noise, x_init, seed=0, diffpir=options, device=device)
        scores.append(psnr(estimate[0], truth))
    print("# diffpir search (lambda, zeta: PSNR):", {(o["lambda_"], o["zeta"]): round(v, 2) for o, v in zip(DIFFPIR_GRID, scores)}, flush=True)
    return DIFFPIR_GRID[int(np.argmax(scores))]


def run_task(task: str, size: int, args, rows: RowFile, figures: dict):
    from recon import reconstruct
    from recon.priors import load_prior
    from recon.priors.data import held_out_images
    from recon.uncertainty import apply_calibration, calibrate, calibration

    spec = TASKS[task]
    images = held_out_images(spec["kind"], size)
    calibration_image, evaluation = images[-1], images[: min(args.images, len(images) - 1)]  # never score the calibration image
    physics = build_operator(spec["operator"], size)
    prior = load_prior(args.prior.get(spec["prior"], spec["prior"]), device=args.device)
    rng = torch.Generator().manual_seed(1234)

    def measure(truth):
        x = torch.from_numpy(truth)[None, None]
        y = physics.A(x)
        if spec["noise"] > 0:
            y = y + spec["noise"] * y.abs().max() * torch.randn(y.shape, generator=rng)
        return y

    noise_std = 0.0
    if spec["noise"] > 0:
        noise_std = float(spec["noise"] * physics.A(torch.from_numpy(calibration_image)[None, None]).abs().max())
    common = dict(noise_sigma=noise_std, device=args.device)

    # Tuning and calibration on a separate image.
    y_cal = measure(calibration_image)
    lam = tune_tv(y_cal, physics, calibration_image) if "tv" in args.methods else None
    ccdf_options = dict(method="ccdf", prior=prior, n_samples=args.samples, steps=args.ccdf_steps, **common)
    scale = calibrate([reconstruct(y_cal, physics, **ccdf_options)], [calibration_image[None]]) if "ccdf" in args.methods else float("nan")
    dps_weight = tune_dps(y_cal, physics, prior, calibration_image, device=args.device) if "dps" in args.methods else None
    diffpir_options = (tune_diffpir(y_cal, physics, prior, calibration_image, noise_std, args.diffpir_steps, device=args.device)
                       if "diffpir" in args.methods else None)
    print(f"# {task} {size}: tv lambda {lam}, dps weight {dps_weight}, diffpir {diffpir_options}, "
          f"ccdf std calibration scale {scale:.3g}", flush=True)

    for index, truth in enumerate(evaluation):
        y = measure(truth)
        noise_here = float(spec["noise"] * y.abs().max()) if spec["noise"] > 0 else 0.0
        options = dict(noise_sigma=noise_here, device=args.device)
        for method, kwargs in [
            ("fbp", dict(method="fbp", device=args.device)),
            ("tv", dict(method="tv", lambda_tv=lam, device=args.device)),
            ("ccdf", dict(ccdf_options, **options)),
            ("diffusion", dict(method="diffusion", prior=prior, n_samples=args.diffusion_samples, steps=args.diffusion_steps, **options)),
            ("genreg", dict(method="genreg", prior=prior, n_samples=args.diffusion_samples, max_iter=args.genreg_iter, **options)),
        ]:
            if method not in args.methods:
                continue
            result = reconstruct(y, physics, **kwargs)
            extra = {}
            if method == "ccdf":
                stats = calibration(apply_calibration(result, scale), truth[None])
                held_out = calibration(result, truth[None])  # reconstruct's own std: calibrated on held-out data
                extra = dict(t0=result.metadata["t0"], coverage_2std_heldout=held_out["coverage_2std"],
                             coverage_1std=stats["coverage_1std"], coverage_2std=stats["coverage_2std"],
                             spearman=stats["spearman_std_error"], calibration_scale=scale)
                if index == 0:
                    figures[(task, size)] = dict(truth=truth, fbp=result.initial[0], mean=result.mean[0],
                                                 std=apply_calibration(result, scale).std[0])
            record(rows, task, size, method, index, result.mean, truth, result.metadata["n_network_evals"],
                   result.metadata["wall_time_s"], **extra)
        x_init = physics.A_dagger(y)
        for method, steps in (("diffpir", args.diffpir_steps), ("dps", args.dps_steps)):
            if method not in args.methods or (method == "dps" and index >= args.dps_images):
                continue
            estimate, nfe, seconds = run_deepinv(method, y, physics, prior, steps, noise_here, x_init.clamp(0, 1), seed=index,
                                                 dps_weight=dps_weight, diffpir=diffpir_options, device=args.device)
            record(rows, task, size, method, index, estimate, truth, nfe, seconds)

        if task in args.t0_tasks:
            for t0 in (*T0_SWEEP, "auto"):
                result = reconstruct(y, physics, **dict(ccdf_options, **options, n_samples=args.sweep_samples, t0=t0))
                record(rows, task, size, "ccdf_t0sweep", index, result.mean, truth, result.metadata["n_network_evals"],
                       result.metadata["wall_time_s"], t0_requested=t0, t0=result.metadata["t0"])


def summarise(rows: list) -> str:
    """Markdown tables: mean over images per task and method; then the t0 sweep."""
    lines = ["| task | size | method | PSNR | SSIM | NFE/sample | wall s | 2-std coverage (calibrated) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["task"], r["size"]) for r in rows}, key=lambda k: (list(TASKS).index(k[0]), k[1]))
    order = ["fbp", "tv", "ccdf", "diffusion", "genreg", "diffpir", "dps"]
    for task, size in keys:
        for method in order:
            sel = [r for r in rows if r["task"] == task and r["size"] == size and r["method"] == method]
            if not sel:
                continue
            coverage = np.mean([r["coverage_2std"] for r in sel]) if "coverage_2std" in sel[0] else None
            lines.append(f"| {task} | {size} | {method} | {np.mean([r['psnr'] for r in sel]):.2f} | "
                         f"{np.mean([r['ssim'] for r in sel]):.3f} | {np.mean([r['nfe'] for r in sel]):.1f} | "
                         f"{np.mean([r['seconds'] for r in sel]):.1f} | "
                         f"{'' if coverage is None else f'{100 * coverage:.1f}%'} |")
    sweep = [r for r in rows if r["method"] == "ccdf_t0sweep"]
    if sweep:
        lines += ["", "| task | size | " + " | ".join(f"t0={t}" for t in T0_SWEEP) + " | auto (t0) | auto - best |",
                  "|---|---|" + "---|" * (len(T0_SWEEP) + 2)]
        for task, size in sorted({(r["task"], r["size"]) for r in sweep}):
            sel = [r for r in sweep if r["task"] == task and r["size"] == size]
            fixed = [np.mean([r["psnr"] for r in sel if r["t0_requested"] == t]) for t in T0_SWEEP]
            auto = [r for r in sel if r["t0_requested"] == "auto"]
            auto_psnr = np.mean([r["psnr"] for r in auto])
            auto_t0 = np.mean([r["t0"] for r in auto])
            lines.append(f"| {task} | {size} | " + " | ".join(f"{p:.2f}" for p in fixed)
                         + f" | {auto_psnr:.2f} ({auto_t0:.2f}) | {auto_psnr - max(fixed):+.2f} dB |")
    return "\n".join(lines)


def save_grid(rows: list[list[tuple]], path: Path, dpi: int = 110) -> None:
    """A figure of image panels, one row per list of ``(title, image, cmap, (vmin, vmax) or None)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.5 * columns, 2.7 * len(rows)), squeeze=False)
    for axes_row, items in zip(axes, rows):
        for ax, (title, image, cmap, limits) in zip(axes_row, items):
            ax.imshow(image, cmap=cmap, vmin=None if limits is None else limits[0], vmax=None if limits is None else limits[1])
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"# figure written to {path}")


def save_figure(figures: dict, path: Path) -> None:
    rows = []
    for (task, size), panels in figures.items():
        error = np.abs(panels["mean"] - panels["truth"])
        rows.append([(f"{task} {size}px: ground truth", panels["truth"], "gray", (0, 1)),
                     ("fbp / A_dagger", panels["fbp"], "gray", (0, 1)), ("ccdf mean", panels["mean"], "gray", (0, 1)),
                     ("ccdf std (calibrated)", panels["std"], "magma", None), ("|error|", error, "magma", None)])
    save_grid(rows, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run for a small CPU (see --help of each option)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--images", type=int, default=4, help="evaluation images per task")
    parser.add_argument("--methods", nargs="+", default=["fbp", "tv", "ccdf", "diffusion", "genreg", "diffpir", "dps"])
    parser.add_argument("--samples", type=int, default=8, help="ccdf samples K")
    parser.add_argument("--ccdf-steps", type=int, default=18, help="18 steps + the auto-t0 probe stay <= 20 NFE/sample")
    parser.add_argument("--diffusion-samples", type=int, default=4)
    parser.add_argument("--diffusion-steps", type=int, default=100)
    parser.add_argument("--genreg-iter", type=int, default=100)
    parser.add_argument("--diffpir-steps", type=int, default=100)
    parser.add_argument("--dps-steps", type=int, default=1000)
    parser.add_argument("--dps-images", type=int, default=100, help="run DPS on only the first N images")
    parser.add_argument("--t0-tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--sweep-samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where every method runs (default: CUDA when available)")
    add_row_arguments(parser)
    parser.add_argument("--figure", type=Path, default=None,
                        help="write the ccdf figure here (docs/figures/methods.png is the committed one; none by default)")
    parser.add_argument("--prior", nargs="*", default=[], metavar="NAME=SPEC",
                        help="use SPEC (a weights path) instead of built-in prior NAME, e.g. natural=run/natural.pt")
    parser.add_argument("--summarise", nargs="+", type=Path, help="only print the tables of earlier --out files")
    args = parser.parse_args(argv)
    if args.summarise:
        rows = [json.loads(line) for path in args.summarise for line in path.read_text().splitlines() if line.strip()]
        print(summarise(rows))
        return
    args.prior = dict(item.split("=", 1) for item in args.prior)
    if args.quick:
        quick = dict(sizes=[128], images=2, dps_images=1, diffusion_samples=2, t0_tasks=["ct30", "mri4x"])
        overridden = [f"--{name.replace('_', '-')}" for name in quick if getattr(args, name) != parser.get_default(name)]
        if overridden:
            parser.error(f"--quick sets {', '.join(overridden)} itself: leave them out, or drop --quick")
        for name, value in quick.items():
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    rows, figures = RowFile(args.out, args.overwrite), {}
    started = time.perf_counter()
    for size in args.sizes:
        for task in args.tasks:
            if size > 128 and not task.startswith("ct"):
                continue  # above 128 px: the CT tasks only
            run_task(task, size, args, rows, figures)
    print(f"# total {time.perf_counter() - started:.0f} s")
    print(summarise(rows.rows))
    if args.figure is not None:
        save_figure({k: v for k, v in figures.items() if k[0] in ("ct30", "mri4x", "sr4")}, args.figure)


if __name__ == "__main__":
    main()
