"""How well could any std rank the error? Spearman(std, |error|) against exact-posterior draws.

Spearman(std, |error|) over a head's anatomy is 0.2-0.3 on MR 4x while over the whole image it is
0.7 (docs/steering.md). A pixel's error is its std times a random draw, so even exact posterior
samples rank the error only as far as the std varies more than that draw does. This benchmark
measures that ceiling on the held-out real slices of ``bench_real.py``: with each of the K samples
of a default reconstruction taken in turn as the truth (a draw from the sampler's own posterior),
the other K - 1 samples give a mean and a pooled std, and Spearman(std, |mean - draw|) is what the
std would score if the sampler's posterior were exactly right. Beside it, from the same K - 1
samples, the score against the real truth, and both against the error's local root mean square
(a Gaussian window of ``--window`` px), which removes most of the draw and asks whether the std
follows where the error is large; and the score of a guess that needs no samples, the mean's edges,
and of the std (all K samples) times those edges.

The truth only scores (the object is where it exceeds ``recon.uncertainty.OBJECT_LEVEL``); the
reconstructions are ccdf (or ``--method genreg``: its K restarts) with every default (``--samples`` K,
default 8), each slice calibrated on its own held-out data.

Usage (the figures in docs/steering.md came from this)::

    OMP_NUM_THREADS=1 python benchmarks/bench_std_ranking.py --tasks mri4x sr4 ct30 --out ranking.jsonl
    python benchmarks/bench_std_ranking.py --summarise ranking.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import Task, magnitude  # noqa: E402

#: Rows of the table: (key, label).
COLUMNS = (("draw", "exact-posterior draw"), ("truth", "real truth"),
           ("draw_local", "draw, local RMS"), ("truth_local", "truth, local RMS"), ("edges", "mean's edges, truth"),
           ("std_edges", "std x edges, truth"))


def leave_one_out(samples: np.ndarray, truth: np.ndarray, window: float) -> dict:
    """Spearman over the object for each sample left out in turn, averaged (see the module's docstring)."""
    from scipy.ndimage import gaussian_filter, sobel

    from recon.uncertainty import object_mask, spearman, std_map

    inside = object_mask(truth)
    local = lambda error: np.sqrt(gaussian_filter(error ** 2, window, mode="reflect"))  # noqa: E731
    totals = {key: [] for key, _ in COLUMNS}
    for k in range(samples.shape[0]):
        others = np.delete(samples, k, axis=0)
        mean, std = others.mean(axis=0), std_map(others)
        for key, target in (("draw", samples[k]), ("truth", truth)):
            error = np.abs(mean - target)
            totals[key].append(spearman(std[inside], error[inside]))
            totals[key + "_local"].append(spearman(std[inside], local(error)[inside]))
    scores = {key: float(np.mean(values)) for key, values in totals.items() if values}
    # a std-free guess of where the error is: the mean's edges (Sobel magnitude, smoothed over 1 px)
    mean = samples.mean(axis=0)
    edges = gaussian_filter(np.hypot(sobel(mean, 0), sobel(mean, 1)), 1.0)
    error = np.abs(mean - truth)[inside]
    return {**scores, "edges": spearman(edges[inside], error),
            "std_edges": spearman((std_map(samples) * edges)[inside], error)}


def run(task_name: str, size: int, window: float, slices, out, n_samples: int = 8, method: str = "ccdf") -> None:
    from recon import reconstruct

    task = Task(task_name, size)
    for i in slices if slices is not None else range(len(task.truth)):
        y, sigma = task.measure(task.fine_truth[i], i)
        started = time.perf_counter()
        result = reconstruct(y, task.physics, method=method, seed=i, noise_sigma=sigma, n_samples=n_samples)
        seconds = time.perf_counter() - started
        samples = np.stack([magnitude(s) for s in result.samples])
        row = {"task": task_name, "method": method, "size": size, "slice": i, "window": window, "K": int(samples.shape[0]),
               "seconds": round(seconds, 1), **leave_one_out(samples, task.truth[i], window)}
        print(json.dumps(row), flush=True)
        if out:
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")


def summarise(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    print("| task (slices) | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for task, method, k in dict.fromkeys((r["task"], r.get("method", "ccdf"), r["K"]) for r in rows):
        mine = [r for r in rows if (r["task"], r.get("method", "ccdf"), r["K"]) == (task, method, k)]
        cells = [f"{np.mean([r[key] for r in mine]):.2f} ({min(r[key] for r in mine):.2f}-{max(r[key] for r in mine):.2f})"
                 for key, _ in COLUMNS]
        label = task if method == "ccdf" else f"{task}, {method}"
        print(f"| {label}, K = {k} ({len(mine)}) | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mri4x", "sr4", "ct30"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--window", type=float, default=2.0, help="Gaussian sigma (px) of the error's local RMS")
    parser.add_argument("--slices", type=int, nargs="+")
    parser.add_argument("--method", default="ccdf", choices=["ccdf", "genreg"], help="every other option default")
    parser.add_argument("--samples", type=int, default=8, help="K; the scores use K - 1 of them at a time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("--summarise")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    torch.set_num_threads(args.threads)
    for task in args.tasks:
        run(task, args.size, args.window, args.slices, args.out, args.samples, args.method)


if __name__ == "__main__":
    main()
