"""Steering, self-validation and calibration without ground truth, on held-out real slices.

The tasks, images and simulation are ``bench_real.py``'s (measured on a 2x finer grid; tv's lambda
tuned on the separate tuning slice). Cases pair a task with a prior: in distribution (the ``ct``
prior on head CT, ``mri`` on head MR) and out of it (each built-in prior on anatomy or a modality
it was not trained on). For each case and image, in one run:

* ``fbp``, ``tv`` (tuned lambda);
* ``ccdf`` with every default (K = 8, held-out calibration), ``adapt="off"`` and ``adapt="auto"``;
  PSNR, 2-std coverage and Spearman(std, |error|) of the calibrated std and of the raw std (the
  calibration used no ground truth), wall time, network images and backward passes;
* ``prior="auto"`` (the built-in prior that predicts held-out data best);
* with ``--t0-sweep``: ccdf at fixed start times, to see how far ``t0="auto"`` is from the best one;
  with ``--t0-validate``: ccdf with ``t0="validate"`` (auto t0 scaled by held-out data), and with
  the adapted prior of ``--adapt on``'s run where that runs;
* with ``--diffpir``: deepinv's DiffPIR with the same prior (lambda and zeta tuned on the tuning slice);
* with ``--genreg``: genreg with ``lambda_reg`` 0.05 (its fixed default before 0.6.0) and ``"auto"``;
  with ``--genreg-steered``: genreg with and without the prior ccdf adapted to the scan (``adapt="on"``,
  handed over as ``choice=``); with ``--genreg-adapt``: genreg with ``adapt="off"`` and ``"on"`` (its
  own adapters);
  with ``--genreg-objectives hard soft``: also those objectives at their defaults, beside the default
  objective with ``lambda_reg="auto"``, all with ``--genreg-samples`` restarts (default 2: the
  generator objectives backpropagate through the generator's flow, about 8 network passes per
  restart and iteration).

Usage (the figures in docs/steering.md came from these)::

    python benchmarks/bench_steering.py --images 3 --out bench_steering.jsonl
    python benchmarks/bench_steering.py --summarise bench_steering.jsonl
    python benchmarks/bench_steering.py --cases 0 --adapt --genreg-objectives diffusion hard soft --out genreg.jsonl
    # the second held-out slice only (the first is measured, not reconstructed, so the noise is the same)
    python benchmarks/bench_steering.py --cases 0 --images 2 --from-image 1 --adapt off --genreg-objectives soft
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
from bench_real import Task, magnitude, run_deepinv, tune_diffpir, tune_tv  # noqa: E402
from rows import RowFile, add_arguments as add_row_arguments  # noqa: E402

#: (task, prior, in distribution?)
CASES = [
    ("ct30", "ct", True), ("mri4x", "mri", True),
    ("ct30", "natural", False), ("ct30", "mri", False), ("ct30_body", "ct", False),
    ("mri4x", "ct", False), ("mri4x", "natural", False), ("mri4x_abdomen", "mri", False),
    ("mri4x_other", "mri", False), ("sr4", "natural", False),
]
T0_SWEEP = (0.1, 0.2, 0.3, 0.45, 0.6)


def uncertainty(result, truth: np.ndarray, n_samples: int) -> dict:
    """2-std coverage and Spearman(std, |error|) of the result's std (over the image and over the
    object), and the coverage of the raw sample std."""
    from recon.uncertainty import over_object, spearman

    mean, std = magnitude(result.mean), magnitude(result.std) if result.std.shape[0] == 2 else result.std[0]
    error = np.abs(np.clip(mean, 0, 1) - truth)
    scale = result.metadata.get("std_scale")
    raw = std / (scale * np.sqrt(1 + 1 / n_samples)) if scale else std
    coverage_object, spearman_object = over_object(std, error, truth)
    return dict(coverage2=float((error <= 2 * std).mean()), coverage2_raw=float((error <= 2 * raw).mean()),
                coverage2_object=coverage_object, spearman=spearman(std, error), spearman_object=spearman_object,
                std_scale=scale)


def row_of(result, task: Task, truth, **fields) -> dict:
    meta = result.metadata
    sv = meta.get("self_validation") or {}
    steering = sv.get("steering") or {}
    return dict(task=task.name, size=task.size, **fields, **task.score(result.mean, truth),
                seconds=meta["wall_time_s"], nfe=meta.get("n_network_evals", 0),
                validation_images=meta.get("validation_network_images", 0), backward=sv.get("backward_images", 0),
                chosen=sv.get("chosen"), heldout_relative_rms=sv.get("heldout_relative_rms"),
                steering_kept=steering.get("kept"), t0=meta.get("t0"), steering_objective=steering.get("objective"),
                heldout_misfit_steered=steering.get("heldout_misfit_steered"),
                heldout_misfit_unsteered=steering.get("heldout_misfit_unsteered"),
                heldout_change_z=steering.get("heldout_change_z"),
                **(uncertainty(result, truth, meta["n_samples"]) if meta["n_samples"] > 1 else {}))


def run_case(task: Task, prior: str, in_distribution: bool, args, out, tv_lambda: float) -> None:
    from recon import reconstruct

    from recon.priors import load_prior

    network = load_prior(prior)
    diffpir = tune_diffpir(task, network, args.diffpir_steps) if args.diffpir and not task.spec.get("complex") else None
    slices = list(enumerate(zip(task.truth[: args.images], task.fine_truth)))
    if args.tuning:  # the tuning slice instead (index -1), to set the gate's constants on images never reported
        slices = [(-1, (task.tuning_truth, task.tuning_fine))]
    for index, (truth, fine) in slices:
        y, sigma = task.measure(fine, index)  # measured even when skipped: the noise of later slices stays the same
        if 0 <= index < args.from_image:
            continue
        seed = index if index >= 0 else 1000  # the tuning slice: a seed of its own
        common = dict(image=index, prior=prior, in_distribution=in_distribution)
        if tv_lambda is not None:
            for method, options in (("fbp", {}), ("tv", dict(lambda_tv=tv_lambda, noise_sigma=sigma))):
                result = reconstruct(y, task.physics, method=method, **options)
                out(row_of(result, task, truth, **{**common, "prior": None}, method=method))
        by_adapt = {}
        for adapt in args.adapt:
            result = by_adapt[adapt] = reconstruct(y, task.physics, prior=network, noise_sigma=sigma, seed=seed, adapt=adapt)
            out(row_of(result, task, truth, **common, method="ccdf", adapt=adapt))
        for objective in args.genreg_objectives:
            options = dict(lambda_reg="auto") if objective == "diffusion" else {}
            result = reconstruct(y, task.physics, method="genreg", prior=network, noise_sigma=sigma, seed=seed,
                                 objective=objective, n_samples=args.genreg_samples, **options)
            parameters = result.metadata["parameters"]
            out(row_of(result, task, truth, **common, method=f"genreg {objective} K={args.genreg_samples}",
                       iterations_nfe=result.metadata["n_network_evals"],
                       weights={k: parameters[k] for k in ("lambda_reg", "alpha", "beta", "generator_sigma_max")
                                if k in parameters}))
        if args.genreg_steered:  # genreg with the prior ccdf adapted, handed over through ccdf's choice
            steered = reconstruct(y, task.physics, prior=network, noise_sigma=sigma, seed=seed, adapt="on")
            out(row_of(steered, task, truth, **common, method="ccdf", adapt="on"))
            for label, choice in (("genreg", None), ("genreg with ccdf's adapted prior", steered.choice)):
                result = reconstruct(y, task.physics, method="genreg", prior=network, noise_sigma=sigma, seed=seed,
                                     n_samples=args.genreg_samples, choice=choice)
                out(row_of(result, task, truth, **common, method=f"{label} K={args.genreg_samples}",
                           lambda_reg=result.metadata["parameters"]["lambda_reg"]))
        if args.genreg_adapt:  # genreg steered by its own adapters (denoising objective) against unsteered
            for adapt in ("off", "on"):
                result = reconstruct(y, task.physics, method="genreg", prior=network, noise_sigma=sigma, seed=seed,
                                     n_samples=args.genreg_samples, adapt=adapt)
                out(row_of(result, task, truth, **common, method=f"genreg K={args.genreg_samples}", adapt=adapt,
                           lambda_reg=result.metadata["parameters"]["lambda_reg"]))
        if args.genreg:
            for lam in (0.05, "auto"):
                result = reconstruct(y, task.physics, method="genreg", prior=network, noise_sigma=sigma, seed=seed,
                                     lambda_reg=lam)
                out(row_of(result, task, truth, **common, method=f"genreg lambda_reg={lam}",
                           lambda_reg=result.metadata["parameters"]["lambda_reg"]))
        if args.t0_validate:
            result = reconstruct(y, task.physics, prior=network, noise_sigma=sigma, seed=seed, t0="validate",
                                 calibrate=False)
            out(row_of(result, task, truth, **common, method="ccdf t0=validate",
                       t0_factor=result.metadata["t0_validation"]["factor"]))
            if "on" in by_adapt:  # the adapted prior of the "on" run, its start checked the same way
                result = reconstruct(y, task.physics, prior=network, noise_sigma=sigma, seed=seed, t0="validate",
                                     choice=by_adapt["on"].choice)
                out(row_of(result, task, truth, **common, method="ccdf t0=validate", adapt="on",
                           t0_factor=result.metadata["t0_validation"]["factor"]))
        if args.t0_sweep and in_distribution:
            for t0 in T0_SWEEP:
                result = reconstruct(y, task.physics, prior=network, noise_sigma=sigma, seed=seed, t0=t0, calibrate=False)
                out(row_of(result, task, truth, **common, method=f"ccdf t0={t0}"))
        if diffpir is not None:
            x_init = task.physics.A_dagger(y).clamp(0, 1)
            estimate, nfe, seconds = run_deepinv("diffpir", y, task.physics, network, args.diffpir_steps, sigma, x_init,
                                                 seed=seed, diffpir=diffpir)
            out(dict(task=task.name, **common, size=task.size, method="diffpir", nfe=nfe, seconds=seconds, **task.score(estimate, truth)))


def calibration_cost(size: int) -> None:
    """Wall time of ccdf (K = 8) with and without the calibration run, best of two each, first held-out slice."""
    from recon import reconstruct

    for name, prior in (("ct30", "ct"), ("mri4x", "mri")):
        task = Task(name, size)
        y, sigma = task.measure(task.fine_truth[0], 0)
        times = {False: [], "auto": []}
        for _ in range(2):
            for calibrate in times:
                result = reconstruct(y, task.physics, prior=prior, noise_sigma=sigma, seed=0, calibrate=calibrate)
                times[calibrate].append(result.metadata["wall_time_s"])
        print(f"{name}: without {min(times[False]):.1f} s, with {min(times['auto']):.1f} s, "
              f"x{min(times['auto']) / min(times[False]):.2f}", flush=True)


def gate_applied(rows: list[dict]) -> list[dict]:
    """Rows for ``adapt="auto"`` where a run has only "off" and "on": training and samples are fixed by
    the seed, so "auto" is "on" where the gate keeps the adapted prior (held-out misfit 2% lower) and
    "off" elsewhere (its time: "on"'s, which did the same work)."""
    from recon.methods.selfvalidation import GATE_MARGIN

    def key(r):
        return (r["task"], r.get("prior"), r["image"], r["method"])

    measured = {key(r) for r in rows if r.get("adapt") == "auto"}
    off = {key(r): r for r in rows if r.get("adapt") == "off"}
    derived = []
    for r in rows:
        if r.get("adapt") != "on" or key(r) in measured or key(r) not in off:
            continue
        kept = r["heldout_misfit_steered"] < (1 - GATE_MARGIN) * r["heldout_misfit_unsteered"]
        derived.append({**(r if kept else off[key(r)]), "adapt": "auto (gate applied to on)", "seconds": r["seconds"],
                        "steering_kept": kept, "backward": r["backward"]})
    return rows + derived


def summarise(rows: list[dict]) -> str:
    """Mean per case and method: PSNR, coverage, Spearman, seconds, network images, backward passes."""
    rows = gate_applied(rows)
    groups: dict = {}
    for r in rows:
        key = (r["task"], r.get("prior") or "-", r["method"] + (f" adapt={r['adapt']}" if r.get("adapt") else ""))
        groups.setdefault(key, []).append(r)
    lines = ["| task | prior | method | n | PSNR | 2-std coverage (raw std) | over the object | Spearman | s | NFE / sample | "
             "validation network images | backward passes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, prior, method), group in groups.items():
        def mean(name):
            values = [r[name] for r in group if r.get(name) is not None]
            return float(np.mean(values)) if values else None
        cov = mean("coverage2")
        coverage = f"{cov:.1%} ({mean('coverage2_raw'):.1%})" if cov is not None else ""
        on_object = f"{mean('coverage2_object'):.1%}" if mean("coverage2_object") is not None else ""
        spear = f"{mean('spearman'):.2f}" if mean("spearman") is not None else ""
        spear += f" ({mean('spearman_object'):.2f} over the object)" if mean("spearman_object") is not None else ""
        kept = [r["steering_kept"] for r in group if r.get("steering_kept") is not None]
        method += f" (kept {sum(kept)}/{len(kept)})" if kept and "auto" in method else ""
        lines.append(f"| {task} | {prior} | {method} | {len(group)} | {mean('psnr'):.2f} | {coverage} | {on_object} | {spear} | "
                     f"{mean('seconds'):.1f} | {mean('nfe') or 0:.0f} | {mean('validation_images') or 0:.0f} | "
                     f"{mean('backward') or 0:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", type=int, help="indices into CASES (default all)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--from-image", type=int, default=0,
                        help="skip the held-out slices before this one (their noise is still drawn)")
    parser.add_argument("--adapt", nargs="*", default=["off", "auto"], help="ccdf's adapt modes (none: no ccdf)")
    parser.add_argument("--genreg", action="store_true", help="genreg with lambda_reg 0.05 (the old default) and 'auto'")
    parser.add_argument("--genreg-objectives", nargs="*", default=[], choices=["diffusion", "hard", "soft"],
                        help="genreg objectives to compare with --genreg-samples restarts each")
    parser.add_argument("--genreg-samples", type=int, default=2)
    parser.add_argument("--genreg-steered", action="store_true",
                        help="genreg with and without the prior ccdf adapted (adapt='on'), through ccdf's choice")
    parser.add_argument("--genreg-adapt", action="store_true",
                        help="genreg with adapt='off' and 'on' (its own adapters; 'auto' derived by the summary)")
    parser.add_argument("--t0-sweep", action="store_true")
    parser.add_argument("--t0-validate", action="store_true", help="ccdf with t0='validate'")
    parser.add_argument("--diffpir", action="store_true")
    parser.add_argument("--diffpir-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tuning", action="store_true", help="run on the task's tuning slice (never reported) instead")
    add_row_arguments(parser)
    parser.add_argument("--summarise", nargs="+", type=Path)
    parser.add_argument("--calibration-cost", action="store_true", help="only time ccdf with and without calibration")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise([json.loads(line) for p in args.summarise for line in p.read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    if args.calibration_cost:
        calibration_cost(args.size)
        return
    out = RowFile(args.out, args.overwrite)  # before any work: an earlier run's rows are not replaced silently
    rows = out.rows

    started, tuned = time.perf_counter(), {}
    for i in args.cases if args.cases is not None else range(len(CASES)):
        name, prior, in_distribution = CASES[i]
        task = Task(name, args.size)
        first = name not in tuned
        if first:
            tuned[name] = tune_tv(task)
        run_case(task, prior, in_distribution, args, out, tuned[name] if first else None)
    print(summarise(rows))
    print(f"# {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
