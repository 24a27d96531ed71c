"""The reverse-diffusion walk: how ``zeta`` mixes the predicted and fresh noise."""

import torch

from methods_stand_ins import CountingBlur


def test_zeta_zero_walks_deterministically_and_one_draws_fresh_noise():
    """From the same noisy start, zeta 0 (DDIM) gives the same path whatever the random stream; zeta 1
    draws new noise at every step, so two streams give two different samples."""
    from recon.methods.diffusion import reverse_diffusion
    from recon.methods.problem import Problem
    from recon.methods.schedule import karras_sigmas

    prior, start = CountingBlur(), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(5, 0.5, 0.002, 80.0, sigma_end=0.01)

    def walk(zeta, seed):
        problem = Problem(physics=None, y=None, x_init=start, denoise=prior, dc=lambda z, s: z,
                          generator=torch.Generator().manual_seed(seed))
        return reverse_diffusion(problem, start.clone(), sigmas, zeta)

    assert torch.equal(walk(0.0, 1), walk(0.0, 2))
    assert not torch.allclose(walk(1.0, 1), walk(1.0, 2))
