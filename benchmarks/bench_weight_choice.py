"""How genreg's ``lambda_reg="auto"`` should pool held-out scores over a volume's slices.

``recon batch`` chooses the weight once per volume. Until 0.28.0 the middle slice's three held-out
splits alone decided it, and one draw of them cost a held-out MR volume 2.6 dB (docs/steering.md,
"The weight with another modality's prior"). This script measures, for every slice of a volume,
each candidate weight's held-out misfit on three splits (the slice's own ``lambda_reg="auto"`` run,
K = 2) and the PSNR each fixed weight gives (K = 2, the same seed), so that ``--summarise`` can
replay any pooling rule with any slice as the reference, against the best fixed weight of the
volume. The truth only scores.

Usage (tuning slabs: rules are chosen there; the held-out slices only check the chosen rule)::

    OMP_NUM_THREADS=1 python benchmarks/bench_weight_choice.py --tasks mri4x --images mri-tuning-slab --prior ct --out w.jsonl
    python benchmarks/bench_weight_choice.py --summarise w.jsonl

``--candidates`` tries other weights than ``reconstruct``'s (same seeds, same splits); ``--summarise``
with several files joins each slice's rows, after checking that the weights they share agree.
``--candidate-iterations N`` scores the candidates with runs of N iterations (the final run keeps the
default) and runs no fixed weights: a fixed weight's PSNR does not depend on how candidates are scored,
so ``--summarise`` takes it from the same slice's rows of the default runs.
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

import recon

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import Task, magnitude  # noqa: E402
from rows import RowFile, add_arguments as add_row_arguments  # noqa: E402

#: Samples per fixed-weight run: the weight's ranking, at a quarter of K = 8's cost.
SAMPLES = 2


def use_candidates(weights) -> None:
    """Make ``lambda_reg="auto"`` choose among ``weights`` in this process (both tables that hold them)."""
    from recon.methods import genreg, option_choice

    genreg.OPTION_CANDIDATES["lambda_reg"] = tuple(weights)
    option_choice.AUTO_OPTIONS[("genreg", "lambda_reg")] = tuple(weights)


def use_candidate_iterations(iterations: int) -> None:
    """Make the candidate runs of ``lambda_reg="auto"`` (this slice's and the neighbours') stop after
    ``iterations`` in this process; the final run keeps its own."""
    from recon.methods import option_choice

    choose = option_choice.choose_option

    def shortened(fits, problem, physics, specific, record, option, *args):
        prior, make_denoiser, progress, *rest = args  # reconstruct passes them in this order
        others = [(f, pr, ph, {**sp, "max_iter": iterations}) for f, pr, ph, sp in (rest[0] if rest else ())]
        return choose(fits, problem, physics, {**specific, "max_iter": iterations}, record, option, prior,
                      make_denoiser, progress, others)

    option_choice.choose_option = shortened


def slice_row(task: Task, index: int, y, sigma: float, prior: str, fixed_weights: bool = True) -> dict:
    """One slice: per-split misfits of every candidate, and every candidate's PSNR at a fixed weight
    (with ``fixed_weights``; otherwise the chosen one's alone)."""
    from recon.methods.genreg import OPTION_CANDIDATES
    from recon.metrics import psnr

    truth = task.truth[index]
    common = dict(method="genreg", prior=prior, n_samples=SAMPLES, calibrate=False, noise_sigma=sigma, seed=index)
    started = time.perf_counter()
    auto = recon.reconstruct(y, task.physics, lambda_reg="auto", **common)
    record = auto.metadata["auto_options"]["lambda_reg"]
    chosen = float(record["chosen"])
    scores = {str(chosen): psnr(np.clip(magnitude(auto.mean), 0, 1), truth)}
    for value in OPTION_CANDIDATES["lambda_reg"] if fixed_weights else ():
        if str(float(value)) not in scores:
            fixed = recon.reconstruct(y, task.physics, lambda_reg=value, **common)
            scores[str(float(value))] = psnr(np.clip(magnitude(fixed.mean), 0, 1), truth)
    return {"slice": index, "per_split": record["per_split"], "chosen_alone": chosen, "psnr": scores,
            "seconds": time.perf_counter() - started}


def slice_scores(per_split: list, splits: int) -> dict:
    """A slice's mean misfit per candidate over its first ``splits`` splits (the per-slice rule)."""
    used = per_split[:splits]
    return {k: statistics.fmean(s[k] for s in used) for k in used[0]}


def pooled_choice(rows: list, reference: int, others: list, splits_other: int, rule: str, splits_reference: int = 3) -> str:
    """The weight a volume takes: ``splits_reference`` of the reference slice's splits and ``splits_other``
    of each other slice's.

    ``rule``: "mean" (every split's raw misfit alike, as ``reconstruct`` pools them:
    ``option_choice.mean_over_splits``), "relative" (each slice's split-mean divided by its mean over
    candidates, then averaged over slices: one vote per slice)."""
    from recon.methods.option_choice import mean_over_splits

    by_slice = {r["slice"]: r for r in rows}
    slices = [(by_slice[reference]["per_split"], splits_reference)] + [(by_slice[i]["per_split"], splits_other) for i in others]
    if rule == "mean":
        candidates = list(by_slice[reference]["per_split"][0])
        means = mean_over_splits(candidates, [split for per_split, n in slices for split in per_split[:n]])
    else:
        each = [slice_scores(p, n) for p, n in slices]
        each = [{k: v / statistics.fmean(s.values()) for k, v in s.items()} for s in each]
        means = {k: statistics.fmean(s[k] for s in each) for k in each[0]}
    return min(means, key=means.get)


def joined_rows(paths) -> list:
    """One row per slice of each volume: the files' rows of that slice joined (their weights' misfits and
    PSNRs together); a weight two rows share must have the same figures, or the runs were not alike."""
    joined = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = (row["task"], row["images"], row["prior"], row.get("candidate_iterations"), row["slice"])
            if key not in joined:
                joined[key] = row
                continue
            into = joined[key]
            if len(into["per_split"]) != len(row["per_split"]):
                raise SystemExit(f"{path}: {key} has {len(row['per_split'])} splits, another file {len(into['per_split'])}")
            pairs = [(into["psnr"], row["psnr"])] + list(zip(into["per_split"], row["per_split"]))
            for old, new in pairs:
                for weight, value in new.items():
                    if weight in old and not math.isclose(old[weight], value, rel_tol=1e-6):
                        raise SystemExit(f"{path}: {key}, weight {weight}: {value} here, {old[weight]} in another file")
                    old.setdefault(weight, value)
    for (task, images, prior, iterations, index), row in joined.items():  # fixed weights from the default runs
        if iterations is not None:
            default = joined.get((task, images, prior, None, index))
            if default is None:
                raise SystemExit(f"{task} {images} {prior} slice {index}: candidates at {iterations} iterations, "
                                 "but no row of the default runs to take the fixed weights' PSNR from")
            for weight, value in default["psnr"].items():
                if weight in row["psnr"] and not math.isclose(row["psnr"][weight], value, rel_tol=1e-6):
                    raise SystemExit(f"{task} {images} {prior} slice {index}: the final run's PSNR differs from the "
                                     f"fixed weight {weight}'s")
                row["psnr"].setdefault(weight, value)
    for row in joined.values():  # the slice alone's choice over every weight now tried
        means = slice_scores(row["per_split"], len(row["per_split"]))
        row["chosen_alone"] = float(min(means, key=means.get))
    return list(joined.values())


def summarise(paths) -> str:
    from recon.methods.option_choice import spread

    rows = joined_rows(paths)
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["images"], r["prior"], r.get("candidate_iterations") or 0), []).append(r)
    lines = ["| volume | slices | best fixed weight (dB) | each slice alone | middle slice's 3 splits | "
             "any slice's 3 splits: mean, worst | all slices, mean rule: mean, worst | all slices, relative | "
             "3 others, mean rule: mean, worst | 3 others, relative | all slices, the reference on 1 split |",
             "|---" * 11 + "|"]
    for (task, images, prior, iterations), group in sorted(groups.items()):
        group = sorted(group, key=lambda r: r["slice"])
        indices = [r["slice"] for r in group]  # one row per slice: joined_rows merges repeats
        weights = sorted(group[0]["psnr"], key=float)
        if any(sorted(r["psnr"], key=float) != weights or sorted(r["per_split"][0], key=float) != weights for r in group):
            raise SystemExit(f"{task} {images} {prior}: not every slice has every weight's misfits and PSNR")

        def volume_psnr(weight: str) -> float:
            return statistics.fmean(r["psnr"][weight] for r in group)

        best_weight = max(weights, key=volume_psnr)
        best = volume_psnr(best_weight)
        alone = statistics.fmean(r["psnr"][str(float(r["chosen_alone"]))] for r in group)
        middle = indices[len(indices) // 2]

        def pooled(reference: int, rule: str, count: int | None, splits_reference: int = 3) -> float:
            others = [i for i in indices if i != reference]
            if count is not None:  # as reconstruct picks them from its neighbours
                others = [others[j] for j in spread(len(others), count)]
            return volume_psnr(pooled_choice(group, reference, others, 1, rule, splits_reference)) - best

        def over_references(rule: str, count: int | None, worst: bool = False, splits_reference: int = 3) -> str:
            each = [pooled(i, rule, count, splits_reference) for i in indices]
            return f"{statistics.fmean(each):+.2f}" + (f", {min(each):+.2f}" if worst else "")

        label = f"{task} {images} {prior}" + (f", candidates at {iterations} iterations" if iterations else "")
        lines.append(f"| {label} | {len(group)} | {best:.2f} ({best_weight}) | {alone - best:+.2f} | "
                     f"{pooled(middle, 'mean', 0):+.2f} | {over_references('mean', 0, True)} | "
                     f"{over_references('mean', None, True)} | {over_references('relative', None)} | "
                     f"{over_references('mean', 3, True)} | {over_references('relative', 3)} | "
                     f"{over_references('mean', None, True, 1)} |")
    lines.append("")
    lines.append("Each column: the volume's mean PSNR with that rule's weight minus the best fixed weight's (K = 2); "
                 "'any slice', 'all slices' and '3 others' average over every slice as the reference.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mri4x"])
    parser.add_argument("--images", default=None, help="bench_real's image set (default: the task's held-out slices)")
    parser.add_argument("--prior", default=None, help="the prior (ct, mri, natural); needed but with --summarise")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, nargs="+", default=None, help="only these slices (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--candidates", type=float, nargs="+", default=None,
                        help="the weights to try (default: reconstruct's lambda_reg candidates)")
    parser.add_argument("--candidate-iterations", type=int, default=None,
                        help="score the candidates with runs of this many iterations (no fixed-weight runs)")
    parser.add_argument("--summarise", metavar="ROWS", nargs="+", default=None,
                        help="print the rules' table from these rows (several files: each slice's rows joined)")
    add_row_arguments(parser)
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.prior is None:
        parser.error("--prior is needed to run (ct, mri or natural)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.candidates:
        use_candidates(args.candidates)
    if args.candidate_iterations:
        use_candidate_iterations(args.candidate_iterations)
    out = RowFile(args.out, args.overwrite)
    for name in args.tasks:
        task = Task(name, args.size, images=args.images)
        measurements = [task.measure(task.fine_truth[i], i) for i in range(len(task.truth))]
        for i in args.slices if args.slices is not None else range(len(measurements)):
            y, sigma = measurements[i]
            row = slice_row(task, i, y, sigma, args.prior, fixed_weights=not args.candidate_iterations)
            out({"task": name, "images": args.images or task.spec["images"], "prior": args.prior, "size": args.size,
                 "version": recon.__version__, **({"candidate_iterations": args.candidate_iterations}
                                                  if args.candidate_iterations else {}), **row})


if __name__ == "__main__":
    main()
