"""Does holding out whole CT views calibrate genreg soft's std where held-out rays do not?

genreg's soft objective fits every measured ray, so held-out rays, which lie among measured ones,
hardly see its error, and their shared-error ratio scattered from 0.55 to 313 over the CT tuning
slab (``benchmarks/results/soft_ct_slab.jsonl``; docs/steering.md, "Why soft's std is not
calibrated on CT"). Whole held-out views leave gaps in angle, where soft's error should lie. For each
slab slice this runs the calibration a volume's slice makes in ``recon batch`` (2 restarts on the fit
data, the slab's chosen options, the same seeds) with both splits, and prints the shared-error ratio
``q``, the K = 8 std scale it gives, the held-out residual over the noise, and the scale the slice's
K = 8 run needed for 93.5 % of its anatomy (its ``factor_for_object`` times its std scale, from
``soft_ct_slab.jsonl``). The view split is this benchmark's: a random eighth of the views (at least
two), every detector bin of each, the fit data's initial estimate filling them from the kept views
on either side.

Usage (the figures in docs/steering.md came from this)::

    OMP_NUM_THREADS=1 python benchmarks/bench_soft_ct_holdout.py --split views --slices 0 1 2 3 4 --out views.jsonl
    OMP_NUM_THREADS=1 python benchmarks/bench_soft_ct_holdout.py --split rays --slices 0 --out rays.jsonl
    python benchmarks/bench_soft_ct_holdout.py --summarise views.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import Task  # noqa: E402
from bench_volume_choice import load_choice, read_rows  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: The slab's K = 8 runs, calibrated by the volume (``bench_volume_choice.py``), and their choice.
SLAB_ROWS, SLAB_CHOICE = RESULTS / "soft_ct_slab.jsonl", RESULTS / "soft_ct_slab.npz"
K = 8


def held_out_views(self, fraction: float, generator: torch.Generator, like=None) -> torch.Tensor:
    """A random ``fraction`` of the views (at least two), every measured bin of each."""
    measured = self.measured_entries(like)
    count = max(2, round(fraction * self.n_angles))
    chosen = torch.randperm(self.n_angles, generator=generator, device=generator.device).cpu()[:count]
    views = torch.zeros(self.n_angles, dtype=torch.bool)
    views[chosen] = True
    return measured & views.view(1, 1, -1, 1).to(measured.device)


def fill_from_kept_views(self, y: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """Held-out views interpolated bin by bin from the kept views on either side (never read)."""
    values = y.detach().cpu().double().numpy()
    held_views = held_out.expand_as(y).cpu().numpy().reshape(-1, *y.shape[-2:])[0].any(-1)
    positions = np.arange(y.shape[-2])
    filled = values.copy()
    for index in np.ndindex(*values.shape[:-2]):
        for bin_ in range(values.shape[-1]):
            kept = values[index][~held_views, bin_]
            filled[index][held_views, bin_] = np.interp(positions[held_views], positions[~held_views], kept)
    return torch.from_numpy(filled).to(device=y.device, dtype=y.dtype)


@contextlib.contextmanager
def view_split():
    """The CT operators hold out whole views while inside."""
    from operators import ct

    saved = ct._CTOperator.held_out_entries, ct._CTOperator.fill_held_out
    ct._CTOperator.held_out_entries, ct._CTOperator.fill_held_out = held_out_views, fill_from_kept_views
    try:
        yield
    finally:
        ct._CTOperator.held_out_entries, ct._CTOperator.fill_held_out = saved


def needed_scales() -> dict:
    """Per slab slice, the std scale its K = 8 run needed for 93.5 % of its anatomy: the held-out scale (the std
    scale without its coverage factor, 1 for soft on CT) times the factor the run needed on it."""
    return {r["slice"]: r["shared"]["std_scale"] / (r["shared"].get("coverage_factor") or 1.0)
            * r["shared"]["factor_for_object"] for r in read_rows(str(SLAB_ROWS))}


def run(split: str, slices: list, out) -> None:
    from recon.methods.api import reconstruct_steps
    from recon.methods.selfvalidation import std_scale
    from recon.progress import run_steps

    choice = load_choice(str(SLAB_CHOICE))
    task = Task("ct30", 128, images="ct-tuning-slab")
    measurements = [task.measure(task.fine_truth[i], i) for i in range(len(task.truth))]
    reference, needed = len(measurements) // 2, needed_scales()
    for i in slices:
        # as in the slab's volume run: the reference slice its own seed, neighbour j seed reference + 1 + j
        seed = reference if i == reference else reference + 1 + (i if i < reference else i - 1)
        y, sigma = measurements[i]
        started = time.perf_counter()
        with view_split() if split == "views" else contextlib.nullcontext():
            made = run_steps(reconstruct_steps(y, task.physics, method="genreg", objective="soft", seed=seed,
                                               noise_sigma=sigma, adapt="off", calibrate="auto", choice_only=True,
                                               calibration_splits=1, **choice.options))
        row = {"split": split, "slice": i, "seed": seed, "options": choice.options,
               "shared_error_ratio": made.error_ratio,
               "std_scale_k8": None if made.error_ratio is None else std_scale(made.error_ratio, K),
               "needed_std_scale_k8": needed.get(i), "heldout_entries": made.metadata["heldout_entries"],
               "heldout_rms_over_noise": made.metadata["heldout_rms_over_noise"],
               "seconds": time.perf_counter() - started}
        print(json.dumps(row), file=out, flush=True)
        print(f"slice {i} ({split}): q {row['shared_error_ratio']:.3g}, K = 8 scale {row['std_scale_k8']:.3g} "
              f"(needed {row['needed_std_scale_k8']:.3g}), held-out rms / noise {row['heldout_rms_over_noise']:.2f}, "
              f"{row['seconds']:.0f} s", flush=True)


def summarise(paths: list) -> str:
    from recon.methods.selfvalidation import std_scale

    rows = [r for path in paths for r in read_rows(path)]
    lines = ["| split | slice | q | K = 8 std scale | scale needed for 93.5 % of the anatomy | needed / given | held-out rms / noise |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["split"], r["slice"])):
        lines.append(f"| {r['split']} | {r['slice']} | {r['shared_error_ratio']:.3g} | {r['std_scale_k8']:.2f} | "
                     f"{r['needed_std_scale_k8']:.1f} | {r['needed_std_scale_k8'] / r['std_scale_k8']:.1f} | "
                     f"{r['heldout_rms_over_noise']:.2f} |")
    for split in sorted({r["split"] for r in rows}):  # pooled as recon batch pools a volume's slices: the median q
        group = [r for r in rows if r["split"] == split]
        scale = std_scale(statistics.median(r["shared_error_ratio"] for r in group), K)
        needed = [r["needed_std_scale_k8"] for r in group]
        lines.append(f"| {split}, the median over {len(group)} slices | | "
                     f"{statistics.median(r['shared_error_ratio'] for r in group):.3g} | {scale:.2f} | "
                     f"{min(needed):.1f}-{max(needed):.1f} (median {statistics.median(needed):.1f}) | "
                     f"{min(needed) / scale:.1f}-{max(needed) / scale:.1f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["rays", "views"], default="views",
                        help="rays: the product's split; views: whole views held out")
    parser.add_argument("--slices", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--out", default=None, help="JSON lines, one per slice")
    parser.add_argument("--summarise", nargs="+", default=None, help="print the table of earlier --out files and stop")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    torch.set_num_threads(1)
    with open(args.out, "a") if args.out else contextlib.nullcontext(sys.stdout) as out:
        run(args.split, args.slices, out)


if __name__ == "__main__":
    main()
