"""ccdf's wall time and PSNR against an earlier version of the package, in the same run.

The earlier version is a git checkout of this repository, run by the same interpreter with its own
source tree first on the path (its own shipped priors included). Both reconstruct the same held-out
real head-CT slices (``real_images("ct-head", 128)``, 30 parallel views, Gaussian noise of 1 % of
``max |A x|``, the noise level handed to the method), made once by this tree. The sides alternate,
one process per side and repeat; each process warms up (loads the prior, one short run) before the
timed calls, and a side's time is the median over its repeats of the summed wall time per slice.
``{"choice": "volume"}`` runs this version as ``recon batch`` does by default: the middle slice
self-validates (held-out calibration) first and the others reuse its choice; the column "per slice
after the first" leaves out the slice a run did first and compares the same slices of the earlier
version, which is what a long volume costs per slice. PSNR: data range 1, the mean clipped to [0, 1]
(``recon.metrics.psnr``; until 0.27.6 this script took the truth's range and no clipping, 0.16-0.24
dB lower on these slices).

    git worktree add /tmp/v040 abd66a6^     # the last commit of 0.4.0
    OMP_NUM_THREADS=1 python benchmarks/bench_versions.py --other /tmp/v040 --samples 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import recon
from operators import ParallelBeamCT
data = np.load(sys.argv[1])
options = json.loads(sys.argv[2])
physics = ParallelBeamCT(128, n_angles=30)
recon.reconstruct(torch.from_numpy(data["y"][0]), physics, method="ccdf", prior="ct", n_samples=1, steps=2, seed=0)
volume = options.pop("choice", None) == "volume"  # the middle slice self-validates, the others reuse its choice
n = len(data["y"])
order = [n // 2] + [i for i in range(n) if i != n // 2] if volume else list(range(n))
times, psnrs, shared = [], [], {}
for i in order:
    y, truth = torch.from_numpy(data["y"][i]), data["truth"][i]
    start = time.perf_counter()
    result = recon.reconstruct(y, physics, method="ccdf", prior="ct", seed=i, noise_sigma=float(data["sigma"][i]),
                               **options, **shared)
    times.append(time.perf_counter() - start)
    if volume:
        shared = {"choice": result.choice}
    mse = float(np.mean((np.clip(result.mean[0], 0, 1) - truth) ** 2))  # data range 1, as recon.metrics.psnr
    psnrs.append(10 * np.log10(1.0 / mse))
print(json.dumps({"version": recon.__version__, "times": times, "psnr": psnrs, "order": order}))
"""


def make_inputs(path: str, images: int) -> None:
    """The slices, their measurements and noise levels, from this tree."""
    sys.path.insert(0, HERE)
    import numpy as np
    import torch

    from operators import ParallelBeamCT
    from recon.priors.data import real_images

    truths = real_images("ct-head", 128)[:images]
    physics, generator = ParallelBeamCT(128, n_angles=30), torch.Generator().manual_seed(0)
    ys, sigmas = [], []
    for truth in truths:
        clean = physics.A(torch.from_numpy(truth)[None, None])
        sigma = 0.01 * float(clean.abs().max())
        ys.append((clean + sigma * torch.randn(clean.shape, generator=generator)).numpy())
        sigmas.append(sigma)
    np.savez(path, y=np.stack(ys), truth=np.stack(truths), sigma=np.array(sigmas))


def run_side(tree: str, inputs: str, options: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", CHILD, inputs, json.dumps(options)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _by_slice(run: dict, name: str) -> list:
    """A child's per-slice values (kept in its run order) in slice order."""
    return [value for _, value in sorted(zip(run["order"], run[name]))]


def _time_without(run: dict, skipped: int) -> float:
    """A child's summed wall time over every slice but ``skipped``."""
    return sum(t for i, t in enumerate(_by_slice(run, "times")) if i != skipped)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="source tree of the earlier version")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sides = {"this": (HERE, [{}, {"choice": "volume"}, {"calibrate": False}, {"calibrate": False, "precision": "float32"}]),
             "other": (args.other, [{}])}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        make_inputs(inputs, args.images)
        runs = {}
        for _ in range(args.repeats):
            for side, (tree, variants) in sides.items():
                for options in variants:
                    result = run_side(tree, inputs, {"n_samples": args.samples, **options})
                    runs.setdefault((side, json.dumps(options)), []).append(result)
    other = statistics.median(sum(r["times"]) for r in runs[("other", "{}")])
    print(f"ccdf, K = {args.samples}, 128 px, 30 views, {args.images} slices, {args.repeats} alternating repeats")
    print("| version | options | s (all slices, median) | ratio to the earlier version | "
          "ratio per slice after the first | PSNR per slice |")
    print("|---|---|---|---|---|---|")
    for (side, options), results in runs.items():
        total = statistics.median(sum(r["times"]) for r in results)
        first = results[0]["order"][0]  # the slice this variant ran first: left out on both sides
        rest = statistics.median(_time_without(r, first) for r in results)
        other_rest = statistics.median(_time_without(r, first) for r in runs[("other", "{}")])
        psnr = ", ".join(f"{p:.2f}" for p in _by_slice(results[0], "psnr"))
        print(f"| {results[0]['version']} | {options} | {total:.1f} | {total / other:.2f} | {rest / other_rest:.2f} | {psnr} |")


if __name__ == "__main__":
    main()
