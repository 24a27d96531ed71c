"""Wall time of one ccdf call (K = 8, 18 steps) for each ``chunk_size``: how many samples per batch suit the CPU.

The network's cost per image grows with the batch once its activations leave the caches, so on the
CPU ``reconstruct`` runs the samples in chunks (``recon/methods/batching.py``: at most 4 samples and
131,072 pixels per network call).
This measures the choice; the calls alternate between chunk sizes, ``--repeats`` rounds, so that a
slow spell of the machine does not fall on one setting. Usage::

    python benchmarks/bench_chunks.py --task ct30 --size 256 --chunks 8 4 2 1 --repeats 2
    python benchmarks/bench_chunks.py --task mri4x --size 128 --chunks 8 4 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import TASKS, build_operator, psnr  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ct30", choices=list(TASKS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--chunks", nargs="+", type=int, default=[8, 4, 2, 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image", type=int, default=4, help="held-out image index (a calibration image)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from recon import reconstruct
    from recon.priors import load_prior
    from recon.priors.data import held_out_images

    torch.set_num_threads(args.threads)
    spec = TASKS[args.task]
    images = held_out_images(spec["kind"], args.size)
    if not 0 <= args.image < len(images):
        parser.error(f"--image {args.image} out of range: {args.task} has {len(images)} held-out images")
    truth = images[args.image]
    physics = build_operator(spec["operator"], args.size)
    prior = load_prior(spec["prior"], device="cpu")
    y = physics.A(torch.from_numpy(truth)[None, None])
    noise = 0.0
    if spec["noise"] > 0:  # seeded by the image, so every chunk size sees the same measurement
        noise = spec["noise"] * float(y.abs().max())
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(100 + args.image))
    reconstruct(y, physics, prior=prior, n_samples=2, steps=2, device="cpu")  # warm-up
    seconds = {c: [] for c in args.chunks}
    for _ in range(args.repeats):
        for chunk in args.chunks:
            started = time.perf_counter()
            # calibrate=False: the held-out calibration run (two samples) would dilute the chunks' difference
            result = reconstruct(y, physics, prior=prior, n_samples=8, steps=18, device="cpu", chunk_size=chunk,
                                 noise_sigma=noise, calibrate=False)
            seconds[chunk].append(time.perf_counter() - started)
            print(f"chunk {chunk}: {seconds[chunk][-1]:.2f} s, PSNR {psnr(result.mean[0], truth):.2f} dB", flush=True)
    for chunk in args.chunks:
        print(f"# {args.task} {args.size} px, chunk {chunk}: median {np.median(seconds[chunk]):.2f} s over {args.repeats}")


if __name__ == "__main__":
    main()
