"""How many samples go through the network in one call: all at once on CUDA, cache-sized on the CPU.

On the CPU the network's cost per image grows with the batch once its activations leave the caches
(2-core CPU, ``ct`` prior, 256 px: 38 ms per image at batch 1, 82 ms at batch 8). ccdf with K = 8
ran fastest in chunks of 4 samples at 128 px and 2 at 256 px (``benchmarks/bench_chunks.py``; table in
docs/methods.md, "Samples in chunks on the CPU"), hence the two limits below.
"""

from __future__ import annotations

import math

import torch

#: At most this many pixels (samples x channels x pixels) per call on the CPU ...
CPU_BATCH_PIXELS = 131072
#: ... and at most this many samples (a complex MRI sample is two network images: real and imaginary).
CPU_BATCH_SAMPLES = 4


def samples_per_call(device, sample_shape, n_samples: int) -> int:
    """Samples of ``sample_shape`` (without batch) to put in one call: ``n_samples`` on CUDA, else the CPU limits."""
    if torch.device(device).type != "cpu":
        return n_samples
    by_pixels = CPU_BATCH_PIXELS // max(1, math.prod(sample_shape))
    return max(1, min(n_samples, CPU_BATCH_SAMPLES, by_pixels))
