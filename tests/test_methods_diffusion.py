"""The reverse-diffusion walk: how ``zeta`` mixes the predicted and fresh noise."""

import torch

from methods_stand_ins import CountingBlur


def test_zeta_zero_walks_deterministically_and_one_draws_fresh_noise():
    """From the same noisy start, zeta 0 (DDIM) gives the same path whatever the random stream; zeta 1
    draws new noise at every step, so two streams give two different samples."""
    from recon.methods.diffusion import reverse_diffusion
    from recon.methods.problem import Problem
    from recon.methods.schedule import karras_sigmas
    from recon.progress import run_steps

    prior, start = CountingBlur(), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(5, 0.5, 0.002, 80.0, sigma_end=0.01)

    def walk(zeta, seed):
        problem = Problem(physics=None, y=None, x_init=start, denoise=prior, dc=lambda z, s: z,
                          generator=torch.Generator().manual_seed(seed))
        return run_steps(reverse_diffusion(problem, start.clone(), sigmas, zeta))

    assert torch.equal(walk(0.0, 1), walk(0.0, 2))
    assert not torch.allclose(walk(1.0, 1), walk(1.0, 2))


def test_a_sampler_yields_each_step_with_a_preview_and_returns_the_samples():
    """k-diffusion's shape plus ``yield``: the caller sees every step and the estimate so far."""
    from recon.methods.diffusion import reverse_diffusion
    from recon.methods.problem import Problem
    from recon.methods.schedule import karras_sigmas

    prior, start = CountingBlur(), torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    problem = Problem(physics=None, y=None, x_init=start[:1], denoise=prior, dc=lambda z, s: z,
                      generator=torch.Generator().manual_seed(0), n_samples=3)
    walk = reverse_diffusion(problem, start, karras_sigmas(4, 0.5, 0.002, 80.0), 1.0)
    steps = []
    try:
        while True:
            steps.append(next(walk))
    except StopIteration as done:
        samples = done.value
    assert [(s.step, s.total) for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[-1].preview.shape == (1, 1, 16, 16) and prior.calls == 4
    torch.testing.assert_close(steps[-1].preview, samples.mean(0, keepdim=True))
