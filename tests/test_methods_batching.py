"""Samples share network calls: chunk sizes, and counts that chunking leaves unchanged."""

import numpy as np
import pytest
import torch
import deepinv as dinv

from recon.methods import reconstruct
from methods_stand_ins import CountingBlur, N, tomography_case


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


def test_samples_run_as_one_batch_and_chunking_counts_the_same(ct):
    physics, _, y = ct
    prior = CountingBlur()
    one = reconstruct(y, physics, prior=prior, n_samples=4, steps=5, t0=0.3, calibrate=False)
    assert prior.calls == 5  # one network call per step for all four samples
    chunked_prior = CountingBlur()
    chunked = reconstruct(y, physics, prior=chunked_prior, n_samples=4, steps=5, t0=0.3, chunk_size=3, calibrate=False)
    assert chunked_prior.calls == 2 * 5  # 3 + 1 samples per step
    assert one.metadata["n_network_evals"] == chunked.metadata["n_network_evals"] == 5
    assert chunked.samples.shape == (4, 1, N, N)
    # chunking is memory only: the method sees all K samples, so the same seed gives the same samples
    np.testing.assert_allclose(chunked.samples, one.samples, atol=1e-6)


def test_cpu_network_calls_are_cache_sized_and_cuda_takes_all_at_once():
    from recon.methods.batching import samples_per_call

    assert samples_per_call("cpu", (1, 128, 128), 8) == 4
    assert samples_per_call("cpu", (1, 256, 256), 8) == 2
    assert samples_per_call("cpu", (1, 512, 512), 8) == 1
    assert samples_per_call("cpu", (2, 256, 256), 8) == 1  # complex images: both parts go through the network
    assert samples_per_call("cpu", (1, 32, 32), 3) == 3
    assert samples_per_call("cuda", (1, 512, 512), 8) == 8


def test_default_chunks_on_the_cpu_are_recorded_and_the_probe_is_chunked_too():
    from recon.methods.ccdf import PROBE_SIGMAS, estimate_error_level
    from recon.methods.denoiser import CountingDenoiser

    physics = dinv.physics.Tomography(angles=20, img_width=128, circle=False, normalize=True)
    y = physics.A(torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)))
    prior = CountingBlur()
    result = reconstruct(y, physics, prior=prior, n_samples=8, steps=3, device="cpu", calibrate=False)
    assert result.metadata["chunk_size"] == 4
    assert reconstruct(y, physics, method="fbp", chunk_size=4).metadata["chunk_size"] == 1  # one sample
    assert prior.calls == 3 + 2 * 3  # the probe's 10 images in 3 calls, then 3 steps for each of 2 chunks
    batches = []

    def denoise(x, sigma):
        batches.append(x.shape[0])
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) * (1 - sigma.view(-1, 1, 1, 1).clamp(max=1) / 4)

    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    chunked = estimate_error_level(CountingDenoiser(denoise, 1), x)
    assert batches == [4, 4, 2] and sum(batches) == len(PROBE_SIGMAS)
    probes = torch.tensor(PROBE_SIGMAS)
    whole = (denoise(x.expand(len(probes), 1, 128, 128), probes) - x).flatten(1).pow(2).mean(1).sqrt()
    from recon.methods.ccdf import interpolate_crossing
    assert chunked == pytest.approx(interpolate_crossing(PROBE_SIGMAS, (whole / probes).tolist(), 0.5), rel=1e-5)


def test_genreg_inverts_the_initial_estimate_once_per_run_whatever_the_chunks(ct, monkeypatch):
    """The DDIM inversion depends only on x_init: one per run, however the network calls are chunked."""
    import recon.methods.genreg as genreg

    physics, _, y = ct
    calls = []
    original = genreg.invert_probability_flow
    monkeypatch.setattr(genreg, "invert_probability_flow", lambda *a, **k: calls.append(1) or original(*a, **k))
    options = dict(method="genreg", objective="hard", prior=CountingBlur(), n_samples=3, max_iter=2, generator_steps=2, seed=0, calibrate=False, alpha=1.0,
                   generator_sigma_max=0.2)  # fixed: "auto" would add its candidate runs
    whole = reconstruct(y, physics, **options)
    chunked = reconstruct(y, physics, chunk_size=1, **options)
    assert len(calls) == 2  # one per run
    assert whole.metadata["n_network_evals"] == chunked.metadata["n_network_evals"]
