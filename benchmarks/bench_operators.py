"""Throughput of our parallel-beam CT against its peers, measured in the same run.

Prints a markdown table of forward (A) and adjoint (A^T) throughput in images per second (default
256x256 with 180 angles; ``--size`` and ``--angles`` change it), for batch 1 and 16, for:

- ours: ``operators.ParallelBeamCT`` (on the CPU: ASTRA's explicit sparse matrix where it is small
  enough, else ASTRA's per-slice calls in parallel threads; ``--no-matrix`` forces the calls),
- deepinv's ``Tomography`` (torch ``grid_sample`` Radon transform, adjoint by autograd),
- scikit-image's ``radon`` / ``iradon(filter_name=None)`` (unfiltered back-projection = adjoint),
- on CUDA: ours on the GPU and deepinv's ``TomographyWithAstra``.

Ratios are ours / peer for the time of one A plus one A^T. Timings are interleaved (each repeat runs
every method once) so a busy machine slows all of them alike; the median of the repeats is kept.

Usage::

    python benchmarks/bench_operators.py [--repeats 5] [--batches 1 16] [--threads N] [--size 128 --angles 30 [--no-matrix]]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch


def _timed(fn, sync=None) -> float:
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def _methods(size: int, n_angles: int, device: str):
    """name -> (forward(x), adjoint(y), make_y(x)) on ``device``."""
    from deepinv.physics import Tomography

    from operators import ParallelBeamCT

    methods = {}
    ours = ParallelBeamCT(size, n_angles=n_angles)
    methods["ours (ASTRA)"] = (ours.A, ours.A_adjoint)
    if device == "cpu":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dinv = Tomography(angles=n_angles, img_width=size, circle=False, normalize=False, device=device)
        methods["deepinv Tomography"] = (dinv.A, dinv.A_adjoint)

        from skimage.transform import iradon, radon

        theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)

        def sk_forward(x):
            return [radon(im, theta=theta, circle=False) for im in x[:, 0].numpy()]

        def sk_adjoint(sinos):
            return [iradon(s, theta=theta, filter_name=None, circle=False, output_size=size) for s in sinos]

        methods["scikit-image radon/iradon"] = (sk_forward, sk_adjoint)
    else:
        try:
            from deepinv.physics import TomographyWithAstra

            astra_dinv = TomographyWithAstra(img_size=(size, size), angles=n_angles, device=device)
            methods["deepinv TomographyWithAstra"] = (astra_dinv.A, astra_dinv.A_adjoint)
        except Exception as err:  # pragma: no cover - depends on the CUDA build of astra
            print(f"(TomographyWithAstra unavailable: {err})")
    return methods


def run(batches=(1, 16), repeats=5, size=256, n_angles=180, devices=None):
    devices = devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else None
        methods = _methods(size, n_angles, device)
        for batch in batches:
            x = torch.rand(batch, 1, size, size, device=device)
            inputs = {name: (x, fwd(x)) for name, (fwd, _) in methods.items()}  # warm-up + adjoint input
            for name, (_, adj) in methods.items():
                adj(inputs[name][1])
            times = {name: ([], []) for name in methods}
            for _ in range(repeats):
                for name, (fwd, adj) in methods.items():
                    times[name][0].append(_timed(lambda: fwd(x), sync))
                    times[name][1].append(_timed(lambda: adj(inputs[name][1]), sync))
            ours_total = None
            for name in methods:
                t_a, t_at = statistics.median(times[name][0]), statistics.median(times[name][1])
                total = t_a + t_at
                if ours_total is None:
                    ours_total = total
                rows.append((device, batch, name, batch / t_a, batch / t_at, total * 1e3 / batch, total / ours_total))
    return rows


def format_table(rows) -> str:
    lines = [
        "| device | batch | method | A (img/s) | A^T (img/s) | A + A^T (ms/img) | ours speed-up (A + A^T) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for device, batch, name, a, at, ms, ratio in rows:
        speedup = "1.00 (reference)" if name.startswith("ours") else f"{ratio:.2f}x"
        lines.append(f"| {device} | {batch} | {name} | {a:.1f} | {at:.1f} | {ms:.1f} | {speedup} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--angles", type=int, default=180)
    parser.add_argument("--threads", type=int, default=None, help="torch/ASTRA worker threads (default: torch's)")
    parser.add_argument("--no-matrix", action="store_true",
                        help="CPU CT through ASTRA's per-slice calls even where the sparse matrix would be used")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_matrix:
        import operators._astra

        operators._astra.MATRIX_MAX_NONZEROS = 0
    print(f"# {args.size}x{args.size}, {args.angles} angles, torch threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}, torch {torch.__version__}{', per-slice ASTRA calls' if args.no_matrix else ''}")
    print(format_table(run(tuple(args.batches), args.repeats, args.size, args.angles)))


if __name__ == "__main__":
    main()
