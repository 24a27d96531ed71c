"""One self-validation per volume against one per slice, on the held-out real slices of a volume.

``recon batch`` makes one choice per volume (prior, kept adapters, std scale) on its middle slice and
applies it to every slice (``reconstruct(..., choice=...)``). This benchmark measures what that costs
and saves: for each task, the held-out slices of ``bench_real.py`` (8 slices of one head CT or one T1
volume) are reconstructed with every default (ccdf, K = 8, held-out calibration), once with their own
self-validation and once with the choice of the middle slice. Per slice: PSNR, 2-std coverage and
Spearman(std, |error|), over the image and over the object (``recon.uncertainty.over_object``; the
truth is only used to score), the std scale, wall time; the ratio of the shared run's wall time to
the per-slice run's is from the same run.

Usage (the figures in docs/steering.md came from this)::

    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks ct30 mri4x sr4 --threads 1 --out volume.jsonl
    # steering once per volume (the middle slice's adapters for all) against unsteered slices
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --prior ct --adapt auto --own-adapt off --out steer.jsonl
    # without steering, the std calibrated by all 8 slices' held-out data, as recon batch does (neighbours=)
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks ct30 mri4x sr4 --threads 1 --neighbours --out volume.jsonl
    # the adapters trained on the first reconstructions of all 8 slices (reconstruct's neighbours=)
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --prior ct --adapt auto --own-adapt off --neighbours
    # genreg (every default), its std calibrated by all 8 slices' held-out data
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --method genreg --neighbours --out genreg.jsonl
    # the same with another floor of the adapters' training (steering.AdaptOptions.sigma_floor)
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --prior ct --adapt auto --own-adapt off --neighbours --sigma-floor 0.1
    # the tuning slab (8 slices around the tuning slice, never trained on): fits COVERAGE_FACTORS
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x sr4 --images mri-tuning-slab --neighbours --out slab.jsonl
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks ct30 --images ct-tuning-slab --neighbours --out slab.jsonl
    # steered ccdf's factors (STEERED_COVERAGE_FACTORS): the volume's steered runs, each prior P in turn
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --prior P --images mri-tuning-slab --adapt auto --own-adapt off --neighbours --volume-only
    # genreg's factors from the volume's runs alone (a genreg slice alone chooses its own weight: several times the cost)
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --method genreg --images mri-tuning-slab --neighbours --volume-only
    # genreg's hard objective at K = 8, resumable and split over two processes once the reference slice's choice is kept
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py --tasks mri4x --method genreg --objective hard --images mri-tuning-slab --neighbours --volume-only --choice-file hard.npz --out hard.jsonl
    OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py ... --slices 0 1 2 &  OMP_NUM_THREADS=1 python benchmarks/bench_volume_choice.py ... --slices 3 5 6 7
    python benchmarks/bench_volume_choice.py --summarise volume.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import recon

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import Task, magnitude  # noqa: E402

#: The object coverage the fitted factors aim at: the middle of the 90-97 % window.
OBJECT_TARGET = 0.935


def scores(result, truth: np.ndarray) -> dict:
    from recon.metrics import psnr
    from recon.uncertainty import object_mask, over_object, spearman

    mean = np.clip(magnitude(result.mean), 0, 1)
    std = magnitude(result.std) if result.std.shape[0] == 2 else result.std[0]
    error = np.abs(mean - truth)
    coverage_object, spearman_object = over_object(std, error, truth)
    # the factor on the held-out (energy) scale that would make this run cover OBJECT_TARGET of the object
    held_out_std = std / (result.metadata.get("coverage_factor") or 1.0)
    ratio = (error / np.maximum(held_out_std, 1e-12))[object_mask(truth)]
    return {"psnr": psnr(mean, truth), "coverage_2std": float((error <= 2 * std).mean()),
            "coverage_2std_object": coverage_object, "spearman_object": spearman_object,
            "spearman": spearman(std, error), "std_scale": result.metadata.get("std_scale"),
            "coverage_factor": result.metadata.get("coverage_factor"),
            "factor_for_object": float(np.quantile(ratio, OBJECT_TARGET) / 2) if ratio.size else None}


def run(task_name: str, size: int, adapt: str, prior: str | None, out, own_adapt: str | None = None,
        train_steps: int | None = None, neighbours: bool = False, t0: str | None = None,
        sigma_floor: float | None = None, rank: int | None = None, method: str = "ccdf", images: str | None = None,
        volume_only: bool = False, objective: str | None = None, choice_file: str | None = None,
        only_slices: list | None = None, previous: list | None = None) -> None:
    """The volume's runs of one task; with ``choice_file`` the reference slice's choice is kept there and
    reused, so that the other slices can run later or in other processes (``only_slices``); slices with a
    row of the same settings in ``previous`` (the rows ``out`` already holds) are skipped."""
    from recon import reconstruct

    task = Task(task_name, size, images=images)
    measurements = [task.measure(task.fine_truth[i], i) for i in range(len(task.truth))]
    reference = len(measurements) // 2
    given = (("train_steps", train_steps), ("sigma_floor", sigma_floor), ("rank", rank))
    settings = {name: value for name, value in given if value is not None}

    def steering(mode):
        return dict(mode=mode, **settings) if settings and mode != "off" else mode

    options = dict(method=method, prior=prior, adapt=steering(adapt), t0=t0, **({"objective": objective} if objective else {}))
    header = {"task": task_name, "images": images or task.spec["images"], "method": method, "objective": objective,
              "size": size, "adapt": adapt, "own_adapt": own_adapt or adapt, "prior": prior,
              "train_steps": train_steps, "sigma_floor": sigma_floor, "rank": rank,
              "training_slices": len(measurements) if neighbours else 1, "t0": t0, "volume_only": volume_only,
              "version": recon.__version__}
    same = [r for r in previous or () if all(r.get(k) == v for k, v in header.items() if k != "version")]
    versions = {r.get("version") for r in same} - {header["version"]}
    if versions:  # as recon batch refuses another version's output: the slices would not be one run's
        raise SystemExit(f"--out holds rows of these settings made by version(s) {sorted(versions, key=str)} "
                         f"(None: before rows named it), this is {header['version']}: name a new --out")
    done = {r["slice"] for r in same}
    wanted = [i for i in range(len(measurements)) if (only_slices is None or i in only_slices) and i not in done]
    volume = VolumeRun(task, measurements, reference, options,
                       {**options, "adapt": steering(own_adapt or adapt), "t0": None if own_adapt else t0},
                       volume_only, header, out)
    choice = load_choice(choice_file, header)
    if choice is not None and reference in wanted:
        raise SystemExit(f"{choice_file} holds the reference slice's choice but --out has no row for that slice: "
                         "remove the file to redo it")
    if choice is None and reference in done and any(i != reference for i in wanted):
        raise SystemExit(f"--out already has the reference slice's row but no choice loads from {choice_file!r}: "
                         "the other slices would take a new choice beside rows made with the old one; pass the "
                         "choice file that run wrote, or a new --out")
    if choice is None:
        started = time.perf_counter()
        y, sigma = measurements[reference]
        # each slice with its own noise level, as recon batch passes them
        others = [(m[0], task.physics, m[1]) for i, m in enumerate(measurements) if i != reference] if neighbours else None
        made = reconstruct(y, task.physics, seed=reference, noise_sigma=sigma, neighbours=others, **options)
        volume.made = made
        choice = made.choice
        save_choice(choice_file, choice, header)
        score_slice(volume, reference, made, time.perf_counter() - started)
    for i in wanted:
        if i == reference:
            continue
        y, sigma = measurements[i]
        started = time.perf_counter()
        shared = reconstruct(y, task.physics, seed=i, noise_sigma=sigma, choice=choice, **options)
        score_slice(volume, i, shared, time.perf_counter() - started)


#: What a kept choice depends on: a choice file made with other values of these is refused.
CHOICE_SETTINGS = ("task", "images", "method", "objective", "size", "adapt", "prior", "train_steps", "sigma_floor",
                   "rank", "training_slices", "t0")


def _settings_path(path: str) -> Path:
    return Path(path).with_suffix(".settings.json")


def save_choice(path: str | None, choice, header: dict) -> None:
    """Keep the reference slice's choice for other processes and later runs (as ``recon batch`` keeps it),
    with the settings it was made with beside it (``<choice>.settings.json``)."""
    from recon.batch.store import write_choice_record

    if path and choice is not None:
        write_choice_record(path, choice.record())
        _settings_path(path).write_text(json.dumps({k: header[k] for k in CHOICE_SETTINGS}) + "\n")


def load_choice(path: str | None, header: dict):
    """The choice :func:`save_choice` kept at ``path``; None where there is none. One made with other settings
    is refused (a slab's choice for the held-out slices, another objective); a file without its settings
    (written before they were kept) is taken as it is, with a note."""
    from recon.batch.store import read_choice_record
    from recon.methods.selfvalidation import Choice

    record = read_choice_record(path) if path else None
    if record is None:
        return None
    settings = _settings_path(path)
    if settings.is_file():
        kept = json.loads(settings.read_text())
        differ = {k: (kept.get(k), header[k]) for k in CHOICE_SETTINGS if kept.get(k) != header[k]}
        if differ:
            raise SystemExit(f"{path} was made with other settings ({', '.join(f'{k}: {a!r}, now {b!r}' for k, (a, b) in differ.items())}): "
                             "give its own settings or another --choice-file")
    else:
        print(f"note: {path} has no {settings.name}: its settings cannot be checked", file=sys.stderr)
    return Choice.from_record(*record)


@dataclass
class VolumeRun:
    """What every slice's row of one task's volume needs (``made``: the reference slice's run, where this
    process made it; ``own_options``: the per-slice runs' options)."""

    task: Task
    measurements: list
    reference: int
    options: dict
    own_options: dict
    volume_only: bool
    header: dict
    out: object
    made: object = None


def score_slice(volume: VolumeRun, i: int, shared, shared_seconds: float) -> None:
    """Print slice ``i``'s row: its shared run's scores and, without ``volume_only``, its own run's."""
    from recon import reconstruct

    task, reference, header, made = volume.task, volume.reference, volume.header, volume.made
    own = None  # with volume_only the reference slice's own run is its shared one: counted once
    if not volume.volume_only:
        # the reference's run is its own only where nothing else trained or calibrated it (no neighbours)
        if i == reference and header["own_adapt"] == header["adapt"] and header["training_slices"] == 1:
            own, own_seconds = made, shared_seconds
        else:
            y, sigma = volume.measurements[i]
            started = time.perf_counter()
            own = reconstruct(y, task.physics, seed=i, noise_sigma=sigma, **volume.own_options)
            own_seconds = time.perf_counter() - started
    row = {**header, "t0_used": shared.metadata.get("t0"),
           "t0_factor": (shared.metadata.get("t0_validation") or {}).get("factor"),
           "slice": i, "reference": i == reference,
           "shared": {**scores(shared, task.truth[i]), "seconds": shared_seconds}}
    if own is not None:
        row["own"] = {**scores(own, task.truth[i]), "seconds": own_seconds}
    if i == reference:  # what the gate saw: held-out misfits with and without the adapters, the change's z-score
        gate = (made.metadata.get("self_validation") or {}).get("steering") or {}
        row["gate"] = {k: gate.get(k) for k in ("heldout_misfit_steered", "heldout_misfit_unsteered",
                                                    "heldout_change_z", "kept")}
        row["options"] = made.choice.options if made.choice is not None else None
    print(json.dumps(row), file=volume.out, flush=True)
    alone = (f"own {row['own']['psnr']:.2f} dB cov {row['own']['coverage_2std']:.3f} scale "
             f"{row['own']['std_scale']} {own_seconds:.1f} s | " if own is not None else "")
    print(f"[{row['task']}] slice {i}{' (reference)' if i == reference else ''}: {alone}"
          f"shared {row['shared']['psnr']:.2f} dB cov {row['shared']['coverage_2std']:.3f} "
          f"object {row['shared']['coverage_2std_object']:.3f} {shared_seconds:.1f} s", flush=True)


def summarise(path: str) -> str:
    rows = read_rows(path)
    lines = ["| task | adapt | PSNR own / shared | 2-std coverage own / shared | the same over the object | "
             "Spearman own / shared | over the object | time shared / own | factor for 93.5 % of the object |",
             "|---|---|---|---|---|---|---|---|---|"]
    def key_of(r):
        own = r.get("own_adapt", r["adapt"])
        return (r["task"] + (f", {r['size']} px" if r.get("size", 128) != 128 else "")
                + (f", {r['images']}" if r.get("images", "").endswith("tuning-slab") else "")
                + (f", {r['method']}" if r.get("method", "ccdf") != "ccdf" else "")
                + (f" {r['objective']}" if r.get("objective") else "")
                + (f", {r['prior']} prior" if r.get("prior") else ""),
                r["adapt"] + (f", {r['train_steps']} training steps" if r.get("train_steps") else "")
                + (f", sigma_floor {r['sigma_floor']}" if r.get("sigma_floor") else "")
                + (f", rank {r['rank']}" if r.get("rank") else "")
                + ((f", calibrated on {r['training_slices']} slices" if r["adapt"] == "off" else
                    f", trained on {r['training_slices']} slices") if r.get("training_slices", 1) > 1 else "")
                + (f", t0 {r['t0']}" if r.get("t0") else "")
                + (f" (own: {own})" if own != r["adapt"] else ""))

    for key in sorted({key_of(r) for r in rows}):
        group = [r for r in rows if key_of(r) == key]
        slices = [r["slice"] for r in group]
        if len(set(slices)) != len(slices):
            raise SystemExit(f"{path}: the rows of {key[0]}, {key[1]} repeat slices {sorted(slices)} (other sizes, "
                             "versions or runs of the same settings): summarise each run's rows on their own")

        def mean(which, name):
            values = [r[which][name] for r in group if name in r.get(which, {})]  # older rows lack the object's
            return float(np.mean(values)) if values else float("nan")

        def span(which, name):
            values = [100 * r[which][name] for r in group if name in r.get(which, {})]  # --volume-only: no own
            return f"{min(values):.1f}-{max(values):.1f} % ({np.mean(values):.1f})" if values else "-"

        alone = [r for r in group if "own" in r]  # none with --volume-only
        ratio = (sum(r["shared"]["seconds"] for r in alone) / sum(r["own"]["seconds"] for r in alone)) if alone else float("nan")
        # their median fits the coverage factors; the own runs count only where they adapt as the shared ones do
        factors = [r[which]["factor_for_object"] for r in group
                   for which in (("own", "shared") if r.get("own_adapt", r["adapt"]) == r["adapt"] else ("shared",))
                   if r.get(which, {}).get("factor_for_object") is not None]
        lines.append(f"| {key[0]} ({len(group)} slices) | {key[1]} | {mean('own', 'psnr'):.2f} / {mean('shared', 'psnr'):.2f} | "
                     f"{span('own', 'coverage_2std')} / {span('shared', 'coverage_2std')} | "
                     f"{span('own', 'coverage_2std_object')} / {span('shared', 'coverage_2std_object')} | "
                     f"{mean('own', 'spearman'):.2f} / {mean('shared', 'spearman'):.2f} | "
                     f"{mean('own', 'spearman_object'):.2f} / {mean('shared', 'spearman_object'):.2f} | {ratio:.2f} | "
                     f"{f'{np.median(factors):.2f}' if factors else '-'} |")
    return "\n".join(lines)


def read_rows(path: str | None) -> list:
    """The rows an earlier run wrote to ``path`` (none where there is no file)."""
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ct30", "mri4x", "sr4"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--method", default="ccdf", choices=["ccdf", "genreg"], help="genreg: every default (lambda_reg chosen per scan)")
    parser.add_argument("--adapt", default="off", choices=["off", "auto", "on"])
    parser.add_argument("--own-adapt", default=None, choices=["off", "auto", "on"],
                        help="adapt of the per-slice runs (default: --adapt); off measures what per-volume steering gains")
    parser.add_argument("--prior", default=None, help="default: the modality's built-in prior")
    parser.add_argument("--train-steps", type=int, default=None, help="the adapters' training steps (default: AdaptOptions')")
    parser.add_argument("--sigma-floor", type=float, default=None, help="the adapters' sigma_floor (default: steering.DEFAULT_SIGMA_FLOOR by the data consistency)")
    parser.add_argument("--rank", type=int, default=None, help="the adapters' rank (default: steering.DEFAULT_RANK by the data consistency)")
    parser.add_argument("--images", default=None, choices=["ct-tuning-slab", "mri-tuning-slab"],
                        help="reconstruct the scan's tuning slab instead of its held-out slices (fits "
                             "selfvalidation.COVERAGE_FACTORS: the median 'factor for 93.5 %% of the object')")
    parser.add_argument("--neighbours", action="store_true",
                        help="the other slices train the adapters (steering) or calibrate the std (adapt off), "
                             "as recon batch's training slices (reconstruct's neighbours=)")
    parser.add_argument("--t0", default=None, help="t0 of the shared runs, e.g. 'validate' (the per-slice runs "
                        "with --own-adapt keep the default)")
    parser.add_argument("--volume-only", action="store_true",
                        help="only the volume's runs (recon batch's), not each slice alone: a genreg slice alone "
                             "chooses its own weight, several times the cost of a slice of the volume")
    parser.add_argument("--objective", default=None, choices=["diffusion", "hard", "soft"], help="genreg's objective (default: its default)")
    parser.add_argument("--choice-file", default=None,
                        help="keep the reference slice's choice here (.npz) and reuse it: a killed or split run goes on "
                             "with the slices --out lacks")
    parser.add_argument("--slices", nargs="+", type=int, default=None,
                        help="only these slices besides the reference's choice (with --choice-file: split a volume over processes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON lines, one per slice")
    parser.add_argument("--summarise", default=None, help="print the table of an earlier --out and stop")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.objective and args.method != "genreg":
        parser.error("--objective is genreg's")
    if args.choice_file and (len(args.tasks) != 1 or not args.out):
        parser.error("--choice-file keeps one task's choice: give one task and --out")
    adapting = args.adapt != "off" or (args.own_adapt or "off") != "off"
    if not adapting and any(v is not None for v in (args.train_steps, args.sigma_floor, args.rank)):
        parser.error("--train-steps, --sigma-floor and --rank set the adapters: they need --adapt or --own-adapt on or auto")
    torch.set_num_threads(args.threads)
    previous = read_rows(args.out) if args.choice_file else []
    out = open(args.out, "a") if args.out else open("/dev/null", "w")
    with out:
        for name in args.tasks:
            run(name, args.size, args.adapt, args.prior, out, args.own_adapt, args.train_steps, args.neighbours, args.t0,
                args.sigma_floor, args.rank, args.method, args.images, args.volume_only, args.objective,
                args.choice_file, args.slices, previous)
    if args.out:
        print(summarise(args.out))


if __name__ == "__main__":
    main()
