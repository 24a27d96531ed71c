"""Tune ccdf options on calibration images: PSNR of the K-sample mean for each option set.

The images are ``held_out_images(kind, size)[i]`` for the given indices; keep them apart from the
ones ``bench_methods.py`` scores (it scores the first ``--images`` and tunes on the last), so that a
setting chosen here is not judged on the images it was chosen on. The operators and noise level are
``bench_methods.py``'s; the noise draw is seeded per image (``100 + index``), so a sweep is
repeatable image by image. ``--steps`` defaults to the benchmark's 18 (the reverse-step
table in docs/methods.md used 20). Each ``--variant`` is a set of ``reconstruct`` options as
``key=value`` pairs separated by commas; an empty variant runs the defaults. Usage (the commands
behind the projection-margin sweep in docs/methods.md, "Auto t0"; the CT lines re-tune
the CG margin the same way)::

    python benchmarks/sweep_ccdf.py --task mri4x --images 4 5 6 --seeds 0 1 \\
        --variant t0_margin=3 --variant t0_margin=4 --variant t0_margin=6 --variant t0_margin=8
    python benchmarks/sweep_ccdf.py --task sr4 --images 2 --seeds 0 1 --variant t0_margin=4 --variant t0_margin=6
    python benchmarks/sweep_ccdf.py --task ct30 --images 4 5 6 --variant t0_margin=0.25 --variant t0_margin=0.35 \\
        --variant t0=0.15
    python benchmarks/sweep_ccdf.py --task ct30 --size 256 --images 4 5 --variant t0_margin=0.7 --variant t0_margin=1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import TASKS, build_operator, psnr  # noqa: E402


def parse_variant(text: str) -> dict:
    """``"t0=0.4,zeta=0.5"`` -> ``{"t0": 0.4, "zeta": 0.5}`` (numbers where they parse, else strings)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant item {item!r} is not key=value")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return options


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", nargs="+", type=int, required=True, help="held-out image indices")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=18, help="18 + the auto-t0 probe: bench_methods' budget")
    parser.add_argument("--variant", action="append", default=[], help='options, e.g. "t0_margin=11,zeta=1"')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from recon import reconstruct
    from recon.priors import load_prior
    from recon.priors.data import held_out_images

    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in (args.variant or [""])]
    spec = TASKS[args.task]
    images = held_out_images(spec["kind"], args.size)
    bad = [i for i in args.images if not 0 <= i < len(images)]
    if bad:
        parser.error(f"images {bad} out of range: {args.task} has {len(images)} held-out images at {args.size} px")
    physics = build_operator(spec["operator"], args.size)
    prior = load_prior(spec["prior"], device=args.device)
    scores = {i: [] for i in range(len(variants))}
    for index in args.images:
        truth = images[index]
        y = physics.A(torch.from_numpy(truth)[None, None])
        noise = 0.0
        if spec["noise"] > 0:
            noise = spec["noise"] * float(y.abs().max())
            y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(100 + index))
        for seed in args.seeds:
            for k, options in enumerate(variants):
                options = {"n_samples": args.samples, "steps": args.steps, **options}
                result = reconstruct(y, physics, method="ccdf", prior=prior, seed=seed, noise_sigma=noise,
                                     device=args.device, **options)
                value = psnr(result.mean[0], truth)
                scores[k].append(value)
                print(json.dumps(dict(image=index, seed=seed, options=options, psnr=round(value, 2),
                                      t0=round(result.metadata["t0"], 3))), flush=True)
    for k, options in enumerate(variants):
        print(f"# {options or 'defaults'}: mean {np.mean(scores[k]):.2f} dB over {len(scores[k])} runs")


if __name__ == "__main__":
    main()
