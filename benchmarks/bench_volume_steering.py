"""Steering once per volume in ``recon batch`` on whole real volumes: its gain and its cost.

``recon batch --adapt auto`` trains the adapters once per volume (on the middle slice and up to 15
others for CT, 7 for MRI and SR), so the training is a fixed cost whose share falls as the volume grows; the 8-slice volumes of
``bench_volume_choice.py`` show it at its largest. Here two real volumes of 48 slices are simulated
with ``recon simulate`` on the reconstruction's own 128 px grid and reconstructed by ``recon batch``
with priors trained on other images, ``--adapt off`` and ``--adapt auto`` side by side (two
processes, one thread each), every other setting the default:

    ct-natural, ct-mri   the InVesalius head CT, axial slices 30-77, 30 views, 1% noise
    mri-ct, mri-natural  Colin27's T1, axial slices 50-97 (padded square), MRI 4x, 1% noise
    sr-natural           the same T1 slices, super-resolution x4, 1% noise

Both volumes contain the real-scan benchmark's held-out slices (named in docs/priors.md); no prior
here was trained on its volume's scan (the ``ct`` prior has seen other slices of the head CT, so it
is not run on it, nor the ``mri`` prior on Colin27). Per volume: mean PSNR of each run, the change
(mean, worst slice), 2-std coverage of |mean - truth| by the calibrated std (over the image and over
the object, ``recon.uncertainty.over_object``), the shared-error ratios that set the volume's std,
and the wall-time ratio.
``--slices N`` keeps the middle N of the 48 (the cost of the training against the volume's length);
``--seed S`` is ``recon batch``'s seed for both runs (the samples' and the adapters' randomness; the
simulated measurements stay the same), to see how much a volume's figures move with it.
``--scans tuning`` takes the tuning volumes instead, which no figure reports: the head CT's axial
slices 78-107 and Colin27's 110-157 (the middle N of those). ``--adapt-option KEY=VALUE`` sets one of
the steered run's adapt options (``steering.AdaptOptions``; a config table ``adapt = {mode = "auto", ...}``),
to choose them on the tuning volumes; ``--off-rows FILE`` takes the unsteered runs from an earlier
rows file of the same volumes, slices, seed and scans instead of running them again (a sweep of adapt
options; no wall-time ratio then). ``--diffpir`` also runs deepinv's DiffPIR with the volume's prior on
every slice, after the two runs, in this process on one thread (its lambda and zeta tuned on the middle
slice of the tuning volume, as ``bench_real.py`` tunes them on its tuning slice): its PSNR, and the
steered run's wall time and network evaluations as ratios against it.
Usage::

    python benchmarks/bench_volume_steering.py --out volume_steering.json
    python benchmarks/bench_volume_steering.py --slices 24 --volumes ct-mri mri-ct
    python benchmarks/bench_volume_steering.py --slices 16 --seed 1
    python benchmarks/bench_volume_steering.py --scans tuning --slices 16 --adapt-option train_steps=600
    python benchmarks/bench_volume_steering.py --scans tuning --slices 16 --adapt-option batch=4 --off-rows rows.json
    python benchmarks/bench_volume_steering.py --slices 16 --diffpir
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

#: the axial slices of each scan: the reported 48, and the tuning volumes above them
SCANS = {"heldout": {"ct": (30, 78), "mri": (50, 98)}, "tuning": {"ct": (78, 108), "mri": (110, 158)}}
_CT, _MRI, _SR = dict(n_angles=30, noise=0.01), dict(acceleration=4, noise=0.01), dict(factor=4, noise=0.01)
VOLUMES = {"ct-natural": dict(scan="ct", modality="ct", prior="natural", settings=_CT),
           "ct-mri": dict(scan="ct", modality="ct", prior="mri", settings=_CT),
           "mri-ct": dict(scan="mri", modality="mri", prior="ct", settings=_MRI),
           "mri-natural": dict(scan="mri", modality="mri", prior="natural", settings=_MRI),
           "sr-natural": dict(scan="mri", modality="sr", prior="natural", settings=_SR)}


def _slices(scan: str, count: int = 48, scans_set: str = "heldout") -> np.ndarray:
    """The middle ``count`` of the scan's axial slices in ``SCANS[scans_set]``, square, in its own units."""
    from recon.priors import scans

    lo, hi = SCANS[scans_set][scan]
    if count > hi - lo:
        raise ValueError(f"the {scans_set} {scan} volume has {hi - lo} slices, not {count}")
    lo += (hi - lo - count) // 2
    hi = lo + count
    data = (scans.head_ct() if scan == "ct" else scans.colin_t1()).data[lo:hi]
    n, h, w = data.shape
    side = max(h, w)
    square = np.full((n, side, side), data.min(), np.float32)
    square[:, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = data
    return square


def _study(name: str, folder: str, count: int, scans_set: str = "heldout") -> str:
    from recon.io.simulate import simulate_study
    from recon.io.slices import Volume

    spec = VOLUMES[name]
    return simulate_study(Volume(_slices(spec["scan"], count, scans_set), units="HU" if spec["scan"] == "ct" else None),
                          os.path.join(folder, f"{name}.h5"), spec["modality"], size=128, **spec["settings"])


#: the object coverage a fitted factor aims at, as in bench_volume_choice.py
OBJECT_TARGET = 0.935


def _factor_for_object(std: np.ndarray, error: np.ndarray, truth: np.ndarray, factor: float) -> float:
    """The coverage factor that would make a slice's 2-std intervals cover :data:`OBJECT_TARGET` of its
    object, ``factor`` being the one its std was scaled by (``selfvalidation.coverage_factor``)."""
    from recon.uncertainty import object_mask

    ratio = (error / np.maximum(std / factor, 1e-12))[object_mask(truth)]
    return float(np.quantile(ratio, OBJECT_TARGET) / 2)


def _scores(study: str, output: str) -> dict:
    import h5py

    from recon.batch.store import read_metadata

    with h5py.File(study, "r") as f:
        truth = f["ground_truth"][()]
    with h5py.File(output, "r") as f:
        mean, std, psnr = f["mean"][()][:, 0], f["std"][()][:, 0], f["psnr"][()]
        nfe = f["n_network_evals"][()]
        samples = json.loads(f.attrs["settings"])["samples"]
        choice = (read_metadata(f).get("volume_choice") or {}).get("metadata") or {}
        steering = choice.get("steering") or {}
    from recon.methods.selfvalidation import coverage_factor
    from recon.uncertainty import over_object

    error = np.abs(mean - truth)
    coverage = (error <= 2 * std).reshape(len(truth), -1).mean(1)
    on_object = [over_object(s, e, t)[0] for s, e, t in zip(std, error, truth)]
    factor = coverage_factor("ccdf", next(_study_slices(study))[1], adapted=bool(steering.get("kept")))  # as the batch scaled it
    needed = [_factor_for_object(s, e, t, factor) for s, e, t in zip(std, error, truth)]
    gate = {key: steering.get(key) for key in ("kept", "heldout_misfit_steered", "heldout_misfit_unsteered", "rounds",
                                               "heldout_misfit_by_round", "round_chosen")
            if key in steering}  # the reference slice's gate, where the run steered
    ratios = {key: source.get(key) for source, keys in (
        (choice, ("shared_error_ratio", "shared_error_ratio_slice", "neighbour_shared_error_ratios",
                  "volume_shared_error_ratio_unsteered", "std_scale")),
        (steering, ("shared_error_ratio_steered", "shared_error_ratio_unsteered", "spread_ratio"))) for key in keys
        if key in source}  # the volume's std: its shared-error ratios (selfvalidation.over_volume)
    return {"psnr": psnr.tolist(), "coverage_2std": coverage.tolist(), "coverage_2std_object": on_object, "gate": gate,
            "ratios": ratios, "coverage_factor": factor, "factor_for_object": needed, "samples": samples,
            "nfe_per_sample": nfe.tolist(),  # each slice's final run, per sample
            # the reference's self-validation (its candidates, the adapters' training and gate), not the
            # training slices' first reconstructions and calibration runs, which only its wall time shows
            "validation": {key: choice.get(key) for key in ("network_images", "backward_images")}}


def _option_value(text: str):
    """A ``--adapt-option`` value as TOML: a number as it is, anything else a string."""
    try:
        float(text)
        return text
    except ValueError:
        return json.dumps(text)


def _adapt_config(folder: str, options: dict) -> list:
    """``recon batch`` arguments for the steered run: ``--adapt auto``, or a config with its options."""
    if not options:
        return ["--adapt", "auto"]
    path = os.path.join(folder, "steered.toml")
    with open(path, "w") as handle:
        entries = ", ".join(f"{key} = {_option_value(value)}" for key, value in options.items())
        handle.write(f'adapt = {{mode = "auto", {entries}}}\n')
    return ["--config", path]


def _earlier_off(rows_file: str, name: str, count: int, seed: int, scans_set: str) -> dict:
    """The unsteered half of ``rows_file``'s row for this volume, slices, seed and scans (the same run
    as :func:`run` would make: ``--adapt off`` does not depend on the adapt options), naming the file."""
    with open(rows_file) as handle:
        rows = json.load(handle)
    for row in rows:
        if (row["volume"], row["slices"], row["seed"], row["scans"]) == (name, count, seed, scans_set):
            return {**row["off"], "from": rows_file}
    raise ValueError(f"{rows_file} has no row for {name} ({scans_set}, {count} slices, seed {seed})")


def _study_slices(path: str):
    """(y, physics, noise sigma, truth) of each slice of a simulated study, as ``recon batch`` reads them."""
    import h5py
    import torch

    from recon.batch.formats import open_input
    from recon.batch.physics import build_physics
    from recon.batch.settings import resolve

    source = open_input(path, resolve())
    with h5py.File(path, "r") as f:
        sigma = float(f.attrs["noise_sigma"])
    for index in range(source.n_slices):
        item = source.read(index, 0)
        yield torch.from_numpy(np.asarray(item.measurement))[None], build_physics(item.physics), sigma, item.ground_truth


def _diffpir(name: str, folder: str, study: str, steps: int) -> dict:
    """deepinv's DiffPIR with the volume's prior on every slice of ``study``, on one thread, its lambda and
    zeta the best of ``bench_real.DIFFPIR_GRID`` on the middle slice of the tuning volume. Its seconds
    include loading the prior and reading the slices, as the batch runs' include theirs."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_methods import run_deepinv
    from bench_real import DIFFPIR_GRID

    from recon.batch.task import score
    from recon.priors import load_prior

    def run_all(path, options):
        for y, physics, sigma, truth in _study_slices(path):
            x_init = physics.A_dagger(y).clamp(0, 1)
            estimate, nfe, _ = run_deepinv("diffpir", y, physics, prior, steps, sigma, x_init, seed=0, diffpir=options)
            yield score(estimate, truth)[0], nfe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tuning = os.path.join(folder, "tuning")
        os.makedirs(tuning, exist_ok=True)
        tuning_study = _study(name, tuning, 1, "tuning")
        started = time.perf_counter()
        prior = load_prior(VOLUMES[name]["prior"])
        loading = time.perf_counter() - started
        tuned = max(DIFFPIR_GRID, key=lambda options: next(run_all(tuning_study, options))[0])
        started = time.perf_counter()
        psnr, nfe = zip(*run_all(study, tuned))
        seconds = loading + time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return {"options": tuned, "steps": steps, "psnr": list(psnr), "nfe_per_sample": list(nfe), "seconds": seconds}


def run(name: str, folder: str, count: int = 48, seed: int = 0, scans_set: str = "heldout",
        adapt_options: dict | None = None, earlier_off: dict | None = None, diffpir_steps: int | None = None) -> dict:
    study = _study(name, folder, count, scans_set)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs, started, finished, logs = {}, {}, {}, {}
    for adapt in ("auto",) if earlier_off else ("off", "auto"):
        chosen = ["--adapt", "off"] if adapt == "off" else _adapt_config(folder, adapt_options or {})
        command = [sys.executable, "-m", "recon.cli", "batch", study, "--out", os.path.join(folder, f"{name}-{adapt}"),
                   "--prior", VOLUMES[name]["prior"], *chosen, "--threads", "1", "--seed", str(seed), "--no-progress"]
        logs[adapt] = open(os.path.join(folder, f"{name}-{adapt}.stderr"), "w+")
        started[adapt] = time.perf_counter()
        jobs[adapt] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=logs[adapt], text=True)
    while len(finished) < len(jobs):  # each job's time ends when it ends, whichever ends first
        for adapt, job in jobs.items():
            if adapt not in finished and job.poll() is not None:
                finished[adapt] = time.perf_counter()
        time.sleep(0.2)
    row = {"volume": name, "prior": VOLUMES[name]["prior"], "slices": count, "seed": seed, "scans": scans_set,
           "adapt_options": adapt_options or {}}
    if earlier_off:
        row["off"] = earlier_off
    for adapt, job in jobs.items():
        logs[adapt].seek(0)
        errors = logs[adapt].read()
        logs[adapt].close()
        if job.returncode:
            raise RuntimeError(f"recon batch --adapt {adapt} failed:\n{errors[-2000:]}")
        row[adapt] = {**_scores(study, os.path.join(folder, f"{name}-{adapt}", f"{name}.h5")),
                      "seconds": finished[adapt] - started[adapt]}
    if diffpir_steps:  # after both runs, alone on the machine
        row["diffpir"] = _diffpir(name, folder, study, diffpir_steps)
    change = np.subtract(row["auto"]["psnr"], row["off"]["psnr"])
    row["summary"] = {"psnr_off": float(np.mean(row["off"]["psnr"])), "psnr_auto": float(np.mean(row["auto"]["psnr"])),
                      "change_mean": float(change.mean()), "change_worst": float(change.min()),
                      **{f"{name}_{adapt}": [float(min(row[adapt][key])), float(np.mean(row[adapt][key])), float(max(row[adapt][key]))]
                         for name, key in (("coverage", "coverage_2std"), ("object", "coverage_2std_object"))
                         for adapt in ("off", "auto")},
                      "time_ratio": None if earlier_off else row["auto"]["seconds"] / row["off"]["seconds"]}
    if diffpir_steps:
        diffpir = row["diffpir"]
        row["summary"].update(psnr_diffpir=float(np.mean(diffpir["psnr"])),
                              time_ratio_auto_diffpir=row["auto"]["seconds"] / diffpir["seconds"],
                              time_ratio_off_diffpir=None if earlier_off else row["off"]["seconds"] / diffpir["seconds"],
                              # network images of a slice's final run (K samples) against DiffPIR's one
                              nfe_ratio_auto_diffpir=float(row["auto"]["samples"] * np.median(row["auto"]["nfe_per_sample"])
                                                           / np.median(diffpir["nfe_per_sample"])))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--slices", type=int, default=48, choices=range(1, 49), metavar="N",
                        help="the middle N of the 48 slices (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="recon batch's seed, for both runs (default 0, its own)")
    parser.add_argument("--scans", default="heldout", choices=list(SCANS),
                        help="the reported volumes (default) or the tuning volumes above them")
    parser.add_argument("--adapt-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an adapt option of the steered run (repeatable), e.g. train_steps=600")
    parser.add_argument("--off-rows", default=None, metavar="FILE",
                        help="take the unsteered runs from this earlier rows file instead of running them")
    parser.add_argument("--diffpir", action="store_true", help="also run deepinv's DiffPIR on every slice, after the two runs")
    parser.add_argument("--diffpir-steps", type=int, default=100)
    parser.add_argument("--out", default=None, help="JSON of every slice's figures")
    args = parser.parse_args(argv)
    if args.diffpir_steps < 1:
        parser.error(f"--diffpir-steps must be at least 1, not {args.diffpir_steps}")
    earlier = {name: _earlier_off(args.off_rows, name, args.slices, args.seed, args.scans)
               for name in args.volumes} if args.off_rows else {}  # read and checked before any work
    options = {}
    for item in args.adapt_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            parser.error(f"--adapt-option takes KEY=VALUE, not {item!r}")
        options[key.strip()] = value.strip()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.volumes:
            rows.append(run(name, folder, args.slices, args.seed, args.scans, options, earlier.get(name),
                            args.diffpir_steps if args.diffpir else None))
            s = rows[-1]["summary"]
            print(f"{name} ({args.scans}, {args.slices} slices, seed {args.seed}, {options or 'default'} adapt options): off {s['psnr_off']:.2f} dB, auto {s['psnr_auto']:.2f} dB, "
                  f"change {s['change_mean']:+.2f} (worst slice {s['change_worst']:+.2f}); 2-std coverage "
                  f"off {s['coverage_off'][1]:.1%} ({s['coverage_off'][0]:.1%}-{s['coverage_off'][2]:.1%}), "
                  f"auto {s['coverage_auto'][1]:.1%} ({s['coverage_auto'][0]:.1%}-{s['coverage_auto'][2]:.1%}), "
                  f"over the object off {s['object_off'][1]:.1%} ({s['object_off'][0]:.1%}-{s['object_off'][2]:.1%}), "
                  f"auto {s['object_auto'][1]:.1%} ({s['object_auto'][0]:.1%}-{s['object_auto'][2]:.1%}); "
                  + (f"wall time auto / off {s['time_ratio']:.2f}" if s["time_ratio"] else "off from " + args.off_rows)
                  + (f"; DiffPIR {s['psnr_diffpir']:.2f} dB, auto / DiffPIR wall time {s['time_ratio_auto_diffpir']:.2f}, "
                     f"network images per slice {s['nfe_ratio_auto_diffpir']:.2f}" if args.diffpir else ""),
                  flush=True)
            if args.out:  # after every volume, so a stopped run keeps what it measured
                with open(args.out, "w") as handle:
                    json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
