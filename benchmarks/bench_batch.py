"""Batch throughput: slices per second in one process and on a 2-worker local Dask cluster.

The same native-layout CT study (held-out images, sparse-view sinograms with 1% noise) is
reconstructed twice with identical settings, once per executor, in this one run, and the outputs
are checked to be identical. Both executors are warmed up first (imports, prior loaded), so the
figures are steady-state throughput; the cluster's start-up (start processes, import, load the
prior in each worker) is reported on its own: ``--workers N`` pays it once per run. Usage::

    python benchmarks/bench_batch.py                          # ccdf, 8 slices of 64 px
    python benchmarks/bench_batch.py --method fbp --slices 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _warm_up(prior: str) -> None:
    """What a process does once before its first slice: imports and loading the prior."""
    import recon.methods  # noqa: F401
    from recon.batch.task import _cached_prior

    if prior:
        _cached_prior(prior, "cpu")


def _run(study: str, out: str, scheduler, args) -> dict:
    import h5py

    from recon.batch import run

    started = time.perf_counter()
    summary = run([study], out, method=args.method, steps=args.steps, samples=args.samples, scheduler=scheduler,
                  threads=1, progress=False, overwrite=True)
    wall = time.perf_counter() - started
    with h5py.File(summary.outputs[0], "r") as f:
        mean, seconds, psnr = f["mean"][()], f["seconds"][()], f["psnr"][()]
    return {"wall": wall, "done": summary.done, "mean": mean, "slice_seconds": float(np.mean(seconds)),
            "psnr": float(np.nanmean(psnr))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ccdf")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from recon.demo import example_images, write_native_ct

    images, source = example_images(min(args.slices, 8), args.size)
    images = np.resize(images, (args.slices, args.size, args.size))  # repeat to the requested count
    with tempfile.TemporaryDirectory() as folder:
        study = write_native_ct(os.path.join(folder, "study.h5"), images, n_angles=30, noise=0.01)
        prior = "ct" if args.method in ("ccdf", "diffusion", "genreg") else ""
        _warm_up(prior)
        local = _run(study, os.path.join(folder, "local"), None, args)
        from distributed import Client

        from recon.batch.dask_runner import local_cluster

        started = time.perf_counter()
        with local_cluster(args.workers) as cluster, Client(cluster) as client:
            client.run(_warm_up, prior)
            startup = time.perf_counter() - started
            dask = _run(study, os.path.join(folder, "dask"), cluster.scheduler_address, args)
    identical = np.array_equal(local["mean"], dask["mean"], equal_nan=True)
    print(f"# {args.slices} slices {args.size}x{args.size}, method={args.method}, steps={args.steps}, "
          f"samples={args.samples}, images: {source}; CPU threads per task: 1; os.cpu_count()={os.cpu_count()}")
    print(f"{'executor':<22} {'wall s':>8} {'slices/s':>9} {'s/slice (task)':>15} {'PSNR dB':>8}")
    for name, r in (("1 process", local), (f"Dask, {args.workers} workers", dask)):
        print(f"{name:<22} {r['wall']:8.1f} {r['done'] / r['wall']:9.3f} {r['slice_seconds']:15.2f} {r['psnr']:8.2f}")
    print(f"speed-up: {local['wall'] / dask['wall']:.2f}x; cluster start-up (once per run): {startup:.1f} s; "
          f"outputs identical: {identical}")


if __name__ == "__main__":
    main()
