"""Denoising PSNR of the built-in priors on their held-out images, against tuned TV and NL-means.

Prints the model-card table of ``docs/priors.md`` (markdown), one block per prior::

    .venv/bin/python benchmarks/bench_priors.py --size 64
    .venv/bin/python benchmarks/bench_priors.py --priors ct mri --size 128 --json out.json
    .venv/bin/python benchmarks/bench_priors.py --priors ct mri --samples docs/figures/priors_samples.png

Noise is Gaussian with a fixed seed; TV weight and NL-means ``h`` are tuned per sigma on a grid
(best mean PSNR on the same images, i.e. an oracle choice that favours the baselines).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recon.priors import held_out_images, load_prior
from recon.priors.data import KINDS
from recon.priors.evaluation import SIGMAS, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", nargs="+", default=["ct", "mri", "natural"], help="built-in names or checkpoint paths")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--samples", help="instead of the table, save unconditional samples (pure noise, 40 Heun steps) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.samples:
        save_samples(args.priors, args.size, args.samples, args.seed)
        return

    results = {}
    for name in args.priors:
        try:
            prior = load_prior(name)
        except FileNotFoundError as error:
            print(f"skipping {name}: {error}")
            continue
        kind = prior.metadata.get("name")
        if kind not in KINDS:  # a checkpoint path scores its own kind's held-out images
            print(f"skipping {name}: no held-out set for a prior named {kind!r} (expected one of {KINDS})")
            continue
        images = held_out_images(kind, args.size)
        start = time.time()
        rows = compare(prior, images, args.sigmas, seed=args.seed)
        results[name] = {"metadata": {k: v for k, v in prior.metadata.items() if k != "validation_psnr"}, "rows": rows}
        print(f"\n### {name} ({len(images)} held-out images, {args.size}x{args.size}, "
              f"{prior.metadata.get('total_steps', prior.metadata.get('steps', '?'))} training steps, {time.time() - start:.0f} s)\n")
        print("| sigma | noisy | prior | TV (tuned weight) | NL-means (tuned h) | prior - best baseline |")  # best in bold
        print("|---|---|---|---|---|---|")
        for r in rows:
            best = max(r["prior"], r["tv"], r["nlm"])
            cells = [(r["prior"], ""), (r["tv"], f" ({r['tv_weight']:g})"), (r["nlm"], f" ({r['nlm_h']:.3g})")]
            prior_cell, tv_cell, nlm_cell = (f"**{v:.2f}**{extra}" if v == best else f"{v:.2f}{extra}" for v, extra in cells)
            margin = r["prior"] - max(r["tv"], r["nlm"])
            print(f"| {r['sigma']:g} | {r['noisy']:.2f} | {prior_cell} | {tv_cell} | {nlm_cell} | {margin:+.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


@torch.no_grad()
def heun_sample(prior, shape, steps: int, generator: torch.Generator) -> torch.Tensor:
    """EDM's deterministic Heun sampler from pure noise (Karras et al. 2022, Algorithm 1)."""
    from recon.methods.schedule import karras_sigmas

    sigmas = karras_sigmas(steps)
    x = 0.5 + sigmas[0] * torch.randn(shape, generator=generator)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        slope = (x - prior(x, float(s))) / s
        x_next = x + (s_next - s) * slope
        if s_next > 0:
            x_next = x + (s_next - s) * (slope + (x_next - prior(x_next, float(s_next))) / s_next) / 2
        x = x_next
    return x.clamp(0, 1)


def save_samples(names, size: int, path: str, seed: int, count: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), count, figsize=(2 * count, 2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        samples = heun_sample(load_prior(name), (count, 1, size, size), 40, torch.Generator().manual_seed(seed))
        for col in range(count):
            axes[row, col].imshow(samples[col, 0], cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_axis_off()
        axes[row, 0].set_title(name, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
