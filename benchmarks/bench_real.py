"""Real-scan benchmark: held-out real slices, classical baselines and diffusion methods, in one run.

Images (``recon.priors.data.real_images``; the files and the held-out slices are named in
``recon.priors.scans`` and docs/priors.md), none of them seen in training:

    ct-head            8 slices of the InVesalius head CT (HU window [-1000, 1500] -> [0, 1])
    mri-head           8 axial slices of Colin27's T1 head
    mri-other-subject  4 coronal slices of ITK's T1 head of another subject (2 mm)
    mri-abdomen        ITK's abdominal MR slice (anatomy no prior was trained on)

Tuning (tv's lambda, DiffPIR's lambda and zeta) uses the separate tuning slice of the same scan
(``ct-tuning``, ``mri-tuning``), never an evaluation slice.

Measurements are simulated on a grid twice as fine as the reconstruction grid (no inverse crime):
CT projects the 2N image with a geometry of the same physical size and detector bins; MRI takes the
central N x N of the 2N image's k-space; SR x4 downsamples the 2N image by 8. CT images are in
attenuation units (water 0.019 / mm, a 245 mm field of view), so line integrals are physical and the
low-dose case is photon counting (``operators.LogPoissonNoise``).

Tasks:

    ct30, ct60      parallel-beam CT, 30 / 60 views, Gaussian noise 1 % of max|y|
    ct30_body       ct30 on body anatomy no CT prior saw (the abdominal MR slice, projected as if CT)
    ct60_lowdose    60 views, Poisson counts with I0 = 4096 photons per bin (LoDoPaB-CT's dose), post-log
    mri4x, mri8x    random Cartesian, 8 % centre, magnitude images
    mri4x_complex   the same images with a smooth random phase, complex-valued reconstruction
    mri4x_other     mri-other-subject; mri4x_abdomen: mri-abdomen
    sr4             super-resolution x4 of the mri-head slices

Methods: fbp (zero-filled / A^dagger), tv (lambda tuned), ccdf and diffusion with each prior given
(``--ct-priors``, ``--mri-priors``; LABEL=SPEC compares a candidate checkpoint in the same run), and
deepinv's DiffPIR with the first prior. ``--denoise`` adds the priors' denoising PSNR against tuned
scikit-image TV and NL-means (``recon.priors.evaluation``) on the held-out slices.

Usage (2-core CPU figures in the README came from this command)::

    python benchmarks/bench_real.py --sizes 128 --slow-images 2 --out bench_real.jsonl
    python benchmarks/bench_real.py --summarise bench_real.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_methods import psnr, run_deepinv, save_grid, ssim  # noqa: E402  (shared metrics, runner, figures)
from rows import RowFile, add_arguments as add_row_arguments  # noqa: E402

CT_FOV_MM = 245.0  # the head CT's field of view (256 x 0.957 mm)
MU_PER_UNIT = 0.048  # attenuation (1 / mm) of image value 1 (1500 HU) when water (0.4) is 0.0192 / mm
TASKS = {
    "ct30": dict(images="ct-head", tuning="ct-tuning", modality="ct", views=30, noise=("gauss", 0.01)),
    "ct60": dict(images="ct-head", tuning="ct-tuning", modality="ct", views=60, noise=("gauss", 0.01)),
    "ct60_lowdose": dict(images="ct-head", tuning="ct-tuning", modality="ct", views=60, noise=("poisson", 4096.0)),
    "ct30_body": dict(images="mri-abdomen", tuning="ct-tuning", modality="ct", views=30, noise=("gauss", 0.01)),
    "mri4x": dict(images="mri-head", tuning="mri-tuning", modality="mri", acceleration=4),
    "mri8x": dict(images="mri-head", tuning="mri-tuning", modality="mri", acceleration=8),
    "mri4x_complex": dict(images="mri-head", tuning="mri-tuning", modality="mri", acceleration=4, complex=True),
    "mri4x_other": dict(images="mri-other-subject", tuning="mri-tuning", modality="mri", acceleration=4),
    "mri4x_abdomen": dict(images="mri-abdomen", tuning="mri-tuning", modality="mri", acceleration=4),
    "sr4": dict(images="mri-head", tuning="mri-tuning", modality="mri", factor=4),
}
TV_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
DIFFPIR_GRID = [dict(lambda_=lam, zeta=zeta) for lam in (1.0, 10.0, 100.0) for zeta in (0.3, 1.0)]


# ----------------------------------------------------------------------------- simulation
def ct_pair(size: int, views: int):
    """The reconstruction operator at ``size`` and the same geometry on a 2x finer image grid."""
    from operators import ParallelBeamCT

    pixel = CT_FOV_MM / size * MU_PER_UNIT  # line integrals in physical units
    coarse = ParallelBeamCT(image_size=size, n_angles=views, pixel_size=pixel)
    fine = ParallelBeamCT(image_size=2 * size, n_angles=views, n_detectors=coarse.n_detectors, detector_spacing=2.0,
                          pixel_size=pixel / 2)
    return coarse, fine


def smooth_phase(size: int, seed: int) -> np.ndarray:
    """A smooth random phase map (radians) like an MR image's: a few low spatial frequencies, +-pi."""
    rng = np.random.default_rng([0x9A5E, seed + 1])
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = np.zeros((size, size))
    for fy in range(3):
        for fx in range(3):
            phase += rng.normal(0, 1.0 / (1 + fx + fy)) * np.cos(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    return phase


def band_limited(fine: np.ndarray, size: int) -> np.ndarray:
    """The N x N image whose k-space is the central N x N of the 2N image's (complex arrays)."""
    from operators.mri import fft2c, ifft2c

    k = fft2c(torch.from_numpy(fine.astype(np.complex64)))
    lo = (k.shape[-1] - size) // 2
    return (ifft2c(k[lo : lo + size, lo : lo + size]) / 2).numpy()  # ortho FFT: the mean is kept


class Task:
    """One task at one size: operator, truth images, and measurements simulated on the fine grid."""

    def __init__(self, name: str, size: int, seed: int = 1234, images: str | None = None):
        import operators
        from recon.priors.data import real_images

        self.name, self.size, self.spec = name, size, TASKS[name]
        self.modality = self.spec["modality"]
        self.generator = torch.Generator().manual_seed(seed)
        self.noise_sigma = 0.0
        if "views" in self.spec:
            self.physics, self.fine = ct_pair(size, self.spec["views"])
        elif "acceleration" in self.spec:
            self.physics = operators.CartesianMRI(size, acceleration=self.spec["acceleration"], center_fraction=0.08,
                                                  seed=0, complex_images=self.spec.get("complex", False))
        else:
            self.physics = operators.SuperResolution(size, factor=self.spec["factor"])
            self.fine = operators.SuperResolution(2 * size, factor=2 * self.spec["factor"])
        images = images or self.spec["images"]  # another set of the same scan, e.g. its tuning slab
        self.truth = real_images(images, size)
        self.fine_truth = real_images(images, 2 * size)
        self.tuning_truth = real_images(self.spec["tuning"], size)[0]
        self.tuning_fine = real_images(self.spec["tuning"], 2 * size)[0]

    def measure(self, fine: np.ndarray, index: int) -> tuple[torch.Tensor, float]:
        """A measurement of the 2N image ``fine`` and the Gaussian noise level data consistency uses.

        CT's noise comes from the task's one generator, so a slice's draw depends on the measurements made
        before it in the process: the tuning slice's (tv, DiffPIR), earlier cases of the same task in
        ``bench_steering.py`` (which tune tv once per task). The figures in the docs were made that way and
        reproduce with their commands as written, in that order; a per-slice seed would have changed every
        CT figure and the rows that resumable runs go on from, so it stays. Compare methods within a run.
        """
        from operators import LogPoissonNoise

        if "views" in self.spec:
            y = self.fine.A(torch.from_numpy(fine)[None, None])
            kind, level = self.spec["noise"]
            if kind == "gauss":
                sigma = level * float(y.abs().max())
                return y + sigma * torch.randn(y.shape, generator=self.generator), sigma
            noise = LogPoissonNoise(I0=level, rng=self.generator)
            return noise(y), noise.post_log_std(y)
        if "acceleration" in self.spec:
            image = fine.astype(np.complex64)
            if self.spec.get("complex"):
                image = image * np.exp(1j * smooth_phase(fine.shape[-1], index))
            coarse = band_limited(image, self.size)
            x = np.stack([coarse.real, coarse.imag]) if self.spec.get("complex") else coarse.real[None]
            return self.physics.A(torch.from_numpy(x.astype(np.float32))[None]), 0.0
        return self.fine.A(torch.from_numpy(fine)[None, None]), 0.0

    def score(self, estimate: np.ndarray, truth: np.ndarray) -> dict:
        """PSNR and SSIM of an estimate (C, H, W) (magnitude of complex ones) against the truth."""
        image = np.clip(magnitude(estimate), 0, 1)
        return dict(psnr=psnr(image, truth), ssim=ssim(image, truth))


# ----------------------------------------------------------------------------- methods
def tune_tv(task: Task) -> float:
    from recon import reconstruct

    y, sigma = task.measure(task.tuning_fine, index=-1)
    scores = {lam: task.score(reconstruct(y, task.physics, method="tv", lambda_tv=lam, noise_sigma=sigma).mean,
                              task.tuning_truth)["psnr"] for lam in TV_LAMBDAS}
    return max(scores, key=scores.get)


def tune_diffpir(task: Task, prior, steps: int) -> dict:
    y, sigma = task.measure(task.tuning_fine, index=-1)
    x_init = task.physics.A_dagger(y).clamp(0, 1)
    scores = [task.score(run_deepinv("diffpir", y, task.physics, prior, steps, sigma, x_init, seed=0, diffpir=o)[0],
                         task.tuning_truth)["psnr"] for o in DIFFPIR_GRID]
    return DIFFPIR_GRID[int(np.argmax(scores))]


def parse_priors(items: list[str]) -> dict[str, str]:
    """``LABEL=SPEC`` or ``SPEC`` (labelled by itself) -> {label: spec}."""
    return dict(item.split("=", 1) if "=" in item else (item, item) for item in items)


def magnitude(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W): the magnitude of a complex (two-channel) image, else its one channel."""
    return np.sqrt((image.astype(np.float64) ** 2).sum(axis=0)) if image.shape[0] == 2 else image[0]


def run_task(task: Task, args, priors: dict, out, panels: dict) -> None:
    from recon import reconstruct

    lam = tune_tv(task) if "tv" in args.methods else None
    first = next(iter(priors))
    # DiffPIR (deepinv) denoises the image as the prior's channels: not the complex task's two
    diffpir = (tune_diffpir(task, priors[first], args.diffpir_steps)
               if "diffpir" in args.methods and not task.spec.get("complex") else None)
    print(f"# {task.name} {task.size}: tv lambda {lam}, diffpir ({first}) {diffpir}", flush=True)
    for index, (truth, fine) in enumerate(zip(task.truth[: args.images], task.fine_truth)):
        y, sigma = task.measure(fine, index)
        runs = [("fbp", None, dict(method="fbp")), ("tv", None, dict(method="tv", lambda_tv=lam, noise_sigma=sigma))]
        for label, prior in priors.items():
            runs.append(("ccdf", label, dict(method="ccdf", prior=prior, n_samples=args.samples, noise_sigma=sigma, seed=index)))
            if index < args.slow_images:
                runs.append(("diffusion", label, dict(method="diffusion", prior=prior, n_samples=args.diffusion_samples,
                                                      noise_sigma=sigma, seed=index)))
        for method, label, options in runs:
            if method not in args.methods:
                continue
            result = reconstruct(y, task.physics, device=args.device, **options)
            if index == 0 and (method != "ccdf" or label == first):
                panels.setdefault((task.name, task.size), {"truth": truth})[method] = magnitude(result.mean)
            row = dict(task=task.name, size=task.size, method=method, prior=label, image=index,
                       nfe=result.metadata.get("n_network_evals", 0), seconds=result.metadata["wall_time_s"],
                       **task.score(result.mean, truth))
            out(row)
        if diffpir is not None and index < args.slow_images:
            x_init = task.physics.A_dagger(y).clamp(0, 1)
            estimate, nfe, seconds = run_deepinv("diffpir", y, task.physics, priors[first], args.diffpir_steps, sigma,
                                                 x_init, seed=index, diffpir=diffpir, device=args.device)
            out(dict(task=task.name, size=task.size, method="diffpir", prior=first, image=index, nfe=nfe,
                     seconds=seconds, **task.score(estimate, truth)))


def denoising(priors: dict, size: int, out) -> None:
    """Each prior's denoising PSNR on the held-out slices of its modality against tuned TV and NL-means."""
    from recon.priors.data import real_images
    from recon.priors.evaluation import compare

    for modality, images_name in (("ct", "ct-head"), ("mri", "mri-head")):
        images = real_images(images_name, size)
        for label, prior in priors[modality].items():
            for row in compare(prior, images):
                values = {k: v for k, v in row.items() if not k.endswith("per_image")}
                values["prior_psnr"] = values.pop("prior")
                out(dict(task=f"denoise_{images_name}", size=size, method="denoise", prior=label, **values))


# ----------------------------------------------------------------------------- tables
def summarise(rows: list[dict]) -> str:
    """Mean PSNR / SSIM per task and method (and prior), with the worst slice's margin over fbp."""
    lines = ["| task | size | method | prior | PSNR | SSIM | worst slice - fbp | images | NFE | s / image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    recon_rows = [r for r in rows if r["method"] != "denoise"]
    for task, size in sorted({(r["task"], r["size"]) for r in recon_rows}, key=lambda k: (list(TASKS).index(k[0]), k[1])):
        sel = [r for r in recon_rows if r["task"] == task and r["size"] == size]
        fbp = {r["image"]: r["psnr"] for r in sel if r["method"] == "fbp"}
        for method, prior in dict.fromkeys((r["method"], r["prior"]) for r in sel):
            group = [r for r in sel if r["method"] == method and r["prior"] == prior]
            margin = min(r["psnr"] - fbp[r["image"]] for r in group) if fbp else float("nan")
            lines.append(f"| {task} | {size} | {method} | {prior or ''} | {np.mean([r['psnr'] for r in group]):.2f} | "
                         f"{np.mean([r['ssim'] for r in group]):.3f} | {margin:+.2f} | {len(group)} | "
                         f"{np.mean([r['nfe'] for r in group]):.0f} | {np.mean([r['seconds'] for r in group]):.1f} |")
    denoise = [r for r in rows if r["method"] == "denoise"]
    if denoise:
        lines += ["", "| images | size | prior | sigma | noisy | prior | tuned TV | tuned NL-means |", "|---|---|---|---|---|---|---|---|"]
        for r in denoise:
            lines.append(f"| {r['task'][8:]} | {r['size']} | {r['prior']} | {r['sigma']:g} | {r['noisy']:.2f} | "
                         f"{r['prior_psnr']:.2f} | {r['tv']:.2f} | {r.get('nlm', math.nan):.2f} |")
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """One line per task and size, one column per method (and prior): mean PSNR, the README's table."""
    recon_rows = [r for r in rows if r["method"] != "denoise"]
    columns = list(dict.fromkeys((r["method"], r["prior"]) for r in recon_rows))
    keys = sorted({(r["task"], r["size"]) for r in recon_rows}, key=lambda k: (list(TASKS).index(k[0]), k[1]))
    lines = ["| task | size | images | " + " | ".join(m if p is None else f"{m} {p}" for m, p in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for task, size in keys:
        cells = []
        for method, prior in columns:
            values = [r["psnr"] for r in recon_rows if (r["task"], r["size"], r["method"], r["prior"]) == (task, size, method, prior)]
            cells.append(f"{np.mean(values):.2f}" if values else "")
        images = len({r["image"] for r in recon_rows if (r["task"], r["size"]) == (task, size)})
        lines.append(f"| {task} | {size} | {images} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_figure(panels: dict, path: Path) -> None:
    """First image of each task: truth, fbp, tv and ccdf with the first prior, and ccdf's |error|."""
    gray = ("gray", (0, 1))
    rows = [[(f"{task} {size} px: truth", p["truth"], *gray), ("fbp / zero-filled", p["fbp"], *gray),
             ("tv (tuned)", p["tv"], *gray), ("ccdf", p["ccdf"], *gray),
             ("|ccdf - truth| x 4", np.abs(p["ccdf"] - p["truth"]) * 4, *gray)]
            for (task, size), p in panels.items() if {"fbp", "tv", "ccdf"} <= set(p)]
    save_grid(rows, path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS), help="none: only --denoise")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--images", type=int, default=8, help="evaluation images per task (at most those of its set)")
    parser.add_argument("--slow-images", type=int, default=2, help="diffusion and DiffPIR run on the first N images only")
    parser.add_argument("--methods", nargs="+", default=["fbp", "tv", "ccdf", "diffusion", "diffpir"])
    parser.add_argument("--ct-priors", nargs="+", default=["ct", "natural"], metavar="[LABEL=]SPEC")
    parser.add_argument("--mri-priors", nargs="+", default=["mri", "natural"], metavar="[LABEL=]SPEC")
    parser.add_argument("--samples", type=int, default=8, help="ccdf samples K")
    parser.add_argument("--diffusion-samples", type=int, default=2)
    parser.add_argument("--diffpir-steps", type=int, default=100)
    parser.add_argument("--denoise", action="store_true", help="also the priors' denoising table (128 px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_row_arguments(parser)
    parser.add_argument("--figure", type=Path, help="write the first image of each task (truth, fbp, tv, ccdf) here")
    parser.add_argument("--summarise", nargs="+", type=Path, help="only print the tables of earlier --out files")
    args = parser.parse_args(argv)
    if args.summarise:
        rows = [json.loads(line) for path in args.summarise for line in path.read_text().splitlines() if line.strip()]
        print(summarise(rows), pivot(rows), sep="\n\n")
        return
    out = RowFile(args.out, args.overwrite)  # before any work: an earlier run's rows are not replaced silently
    rows = out.rows
    from recon.priors import load_prior, scans

    if not scans.available():
        sys.exit("the real scans are not installed: run scripts/setup_scans.sh")
    torch.set_num_threads(args.threads)
    priors = {m: {label: load_prior(spec, device=args.device) for label, spec in parse_priors(items).items()}
              for m, items in (("ct", args.ct_priors), ("mri", args.mri_priors))}

    started = time.perf_counter()
    panels = {}
    if args.denoise:
        denoising(priors, 128, out)
    for size in args.sizes:
        for name in args.tasks:
            task = Task(name, size)
            run_task(task, args, priors[task.modality], out, panels)
            if args.figure:
                save_figure(panels, args.figure)
    print(f"# total {time.perf_counter() - started:.0f} s")
    print(summarise(rows), pivot(rows), sep="\n\n")


if __name__ == "__main__":
    main()
