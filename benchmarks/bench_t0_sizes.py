"""How the best ccdf start time t0 moves with image size, against auto t0 (sparse-view CT).

Runs on the CT calibration images 4-6 of ``held_out_images("ct", size)`` (the method benchmark scores
0-3 and calibrates on 7), 30-view parallel beam, ccdf with K = 2 samples and 18 steps. Prints one JSON
row per image: the initial FBP error, the auto-t0 probe ratios, PSNR at each fixed t0 and at "auto".
The table in ``docs/methods.md`` (auto t0 at 128, 256 and 512 px) comes from::

    python benchmarks/bench_t0_sizes.py --size 128 --images 4 5 6
    python benchmarks/bench_t0_sizes.py --size 256 --images 4 5 6
    python benchmarks/bench_t0_sizes.py --size 512 --images 4 5 --t0 0.3 0.35 0.4 0.45 0.5
"""

import argparse
import json

import numpy as np
import torch

import operators
from recon import reconstruct
from recon.methods.ccdf import PROBE_SIGMAS
from recon.metrics import psnr
from recon.priors import load_prior
from recon.priors.data import held_out_images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--t0", type=float, nargs="+", default=[0.25, 0.3, 0.35, 0.4, 0.45])
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std as a fraction of max|y|")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior("ct", device="cpu")
    images = held_out_images("ct", args.size)
    physics = operators.ParallelBeamCT(image_size=args.size, n_angles=30)
    for index in args.images:
        truth = images[index]
        y = physics.A(torch.from_numpy(truth)[None, None].float())
        noise_sigma = args.noise * float(y.abs().max())
        if noise_sigma:
            y = y + noise_sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(index))
        fbp = physics.A_dagger(y).clamp(0, 1)
        probes = torch.tensor(PROBE_SIGMAS)
        with torch.no_grad():
            batch = fbp.expand(len(probes), *fbp.shape[1:])
            ratios = ((prior(batch, probes) - batch).flatten(1).pow(2).mean(1).sqrt() / probes).tolist()
        row = {"size": args.size, "image": index, "noise": args.noise, "fbp_rms_error": float(np.sqrt(np.mean((fbp[0, 0].numpy() - truth) ** 2))),
               "probe_ratios": [round(r, 3) for r in ratios]}
        for t0 in [*args.t0, "auto"]:
            result = reconstruct(y, physics, method="ccdf", prior=prior, n_samples=2, steps=18, t0=t0, device="cpu",
                                 noise_sigma=noise_sigma)
            row[str(t0)] = round(psnr(result.mean[0], truth), 2)
            if t0 == "auto":
                row["auto_t0"] = round(result.metadata["t0"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
