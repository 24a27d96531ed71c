"""How the best ccdf start time t0 moves with image size and view count, against auto t0 (sparse-view CT).

Runs on CT calibration images of ``held_out_images("ct", size)`` (the method benchmark scores the
first ones and tunes its baselines on 7; 4-7 were used here), parallel beam with ``--views`` angles,
noiseless unless ``--noise`` (Gaussian, std a fraction of max|y|, drawn with seed ``100 + index`` as in
``sweep_ccdf.py``), ccdf with ``--samples`` samples and 18 steps (seed 0). Prints one JSON row per
image: the measurements per unknown (``y.numel() / x.numel()``; ccdf's rule counts the nonzero ones,
90% of these for parallel beam), the auto-t0 probe's error estimate and the initial estimate's true
RMS error (both in the prior's [0, 1] units), and PSNR at "auto", at each fixed ``--t0`` and at each
``--margins`` value, with the t0 each chose. The CG margin's table in ``docs/methods.md`` ("Auto
t0") comes from::

    python benchmarks/bench_t0_sizes.py --size 128 --views 30 --images 4 5 6 7 --samples 8 \
        --t0 0.05 0.075 0.1 0.15 0.2 0.25          # and --views 60, 90
    python benchmarks/bench_t0_sizes.py --size 256 --views 30 --images 4 5 6 7 --samples 8 \
        --t0 0.1 0.15 0.2 0.25 0.3                 # and --views 60, 120
    python benchmarks/bench_t0_sizes.py --size 512 --views 30 --images 4 5 --samples 2 \
        --t0 0.15 0.2 0.25 0.3 0.35

The fixed-start columns were first measured by a scratch script making the same calls (it also ran
``t0_margin=1``); the losses of the size step of version 0.3.0 and of the ``0.09 / r`` rule were read off those
PSNR-against-t0 curves, and the rule's auto runs were then measured with this script and ``--t0`` given no values.
"""

import argparse
import json

import numpy as np
import torch

import operators
from recon import reconstruct
from recon.metrics import psnr
from recon.priors import load_prior
from recon.priors.data import held_out_images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--images", type=int, nargs="+", default=[4, 5, 6, 7])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--t0", type=float, nargs="*", default=[0.15, 0.2, 0.25, 0.3])
    parser.add_argument("--margins", type=float, nargs="*", default=[], help="fixed t0_margin values to run too")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std as a fraction of max|y|")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior("ct", device="cpu")
    images = held_out_images("ct", args.size)
    physics = operators.ParallelBeamCT(image_size=args.size, n_angles=args.views)
    for index in args.images:
        truth = images[index]
        y = physics.A(torch.from_numpy(truth)[None, None].float())
        noise_sigma = args.noise * float(y.abs().max())
        if noise_sigma:
            y = y + noise_sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(100 + index))
        common = dict(method="ccdf", prior=prior, n_samples=args.samples, steps=18, seed=0, device="cpu",
                      noise_sigma=noise_sigma)
        auto = reconstruct(y, physics, t0="auto", **common)
        lo, hi = auto.metadata["intensity_range"]
        row = {"size": args.size, "views": args.views, "image": index, "noise": args.noise,
               "measurements_per_unknown": round(y.numel() / truth.size, 4),
               "estimated_error": round(auto.metadata["estimated_initial_error"], 4),
               "true_error": round(float(np.sqrt(np.mean((np.asarray(auto.initial)[0] - truth) ** 2)) / (hi - lo)), 4),
               "auto": [round(auto.metadata["t0"], 3), round(psnr(auto.mean[0], truth), 2)],
               "auto_margin": round(auto.metadata["t0_margin"], 3)}
        for t0 in args.t0:
            row[f"t0={t0}"] = round(psnr(reconstruct(y, physics, t0=t0, **common).mean[0], truth), 2)
        for margin in args.margins:
            result = reconstruct(y, physics, t0="auto", t0_margin=margin, **common)
            row[f"margin={margin}"] = [round(result.metadata["t0"], 3), round(psnr(result.mean[0], truth), 2)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
