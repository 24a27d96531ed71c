"""Reconstructions with the shipped priors and our operators are better than their starting points.

Small images (64 px) and few steps keep this file to well under a minute on two CPU cores.
"""

import numpy as np
import pytest
import torch

import operators
from recon import metrics, reconstruct
from recon.priors.data import held_out_images
from recon.result import load_result

SIZE = 64


def _builtin(name):
    from recon.priors import available_builtins, load_prior

    if name not in available_builtins():
        pytest.skip(f"built-in prior {name!r} has no weights file in recon/priors/weights (not trained yet)")
    return load_prior(name, device="cpu")


@pytest.fixture(scope="module")
def ct_prior():
    return _builtin("ct")


@pytest.fixture(scope="module")
def ct_case():
    truth = held_out_images("ct", SIZE)[2]
    physics = operators.ParallelBeamCT(image_size=SIZE, n_angles=20)
    return truth, physics, physics.A(torch.from_numpy(truth)[None, None])


def psnr(estimate, truth):
    return metrics.psnr(estimate, truth, data_range=1.0)


def test_ccdf_improves_on_fbp_for_sparse_view_ct(ct_prior, ct_case):
    truth, physics, y = ct_case
    result = reconstruct(y, physics, method="ccdf", prior=ct_prior, n_samples=4, steps=10)
    fbp = psnr(result.initial[0], truth)
    ccdf = psnr(result.mean[0], truth)
    assert ccdf > fbp + 2.0, f"ccdf {ccdf:.2f} dB vs fbp {fbp:.2f} dB"
    assert result.metadata["n_network_evals"] <= 10 + 10 / 4  # steps plus the auto-t0 probe


def test_tv_improves_on_fbp_for_sparse_view_ct(ct_case):
    truth, physics, y = ct_case
    result = reconstruct(y, physics, method="tv")
    assert psnr(result.mean[0], truth) > psnr(result.initial[0], truth) + 1.0


def test_diffusion_and_genreg_beat_the_fbp_start(ct_prior, ct_case):
    truth, physics, y = ct_case
    fbp = psnr(physics.A_dagger(y)[0, 0].numpy(), truth)
    diffusion = reconstruct(y, physics, method="diffusion", prior=ct_prior, n_samples=2, steps=12)
    genreg = reconstruct(y, physics, method="genreg", prior=ct_prior, n_samples=2, max_iter=30)
    assert psnr(diffusion.mean[0], truth) > fbp
    assert psnr(genreg.mean[0], truth) > fbp


def test_generator_objectives_fit_the_data(ct_prior, ct_case):
    """Hard: optimising z lowers ||A G(z) - y||. Soft with a weak coupling: x stays closer to the data.

    Duff's original setting (random z, flow from the prior's sigma_max), where the data misfit starts large.
    """
    truth, physics, y = ct_case

    def misfit(objective, iterations, **options):
        result = reconstruct(y, physics, method="genreg", prior=ct_prior, n_samples=1, objective=objective,
                             max_iter=iterations, generator_steps=3, seed=3, z_init="random",
                             generator_sigma_max=None, **{"alpha": 1e-3, **options})
        return float((physics.A(torch.from_numpy(result.mean)[None]) - y).norm())

    hard = misfit("hard", 15)
    assert hard < 0.8 * misfit("hard", 1)
    assert misfit("soft", 15, beta=0.1) < 0.8 * hard


def test_inverting_the_generator_then_generating_reproduces_an_image(ct_prior, ct_case):
    """DDIM inversion is (close to) the generator's inverse, and closer on the shorter default flow."""
    from recon.methods.genreg import GENERATOR_SIGMA_MAX, invert_probability_flow, probability_flow
    from recon.methods.schedule import karras_sigmas

    truth = ct_case[0]
    x = torch.from_numpy(truth)[None, None]

    def round_trip(sigma_max):
        sigmas = karras_sigmas(4, 1.0, 0.002, sigma_max)
        with torch.no_grad():
            generated = probability_flow(ct_prior, invert_probability_flow(ct_prior, x, sigmas), sigmas)
        return psnr(generated[0, 0].numpy(), truth)

    default, full = round_trip(GENERATOR_SIGMA_MAX), round_trip(80.0)
    assert default > 30.0, f"round trip {default:.2f} dB"
    assert default > full + 3.0, f"sigma_max {GENERATOR_SIGMA_MAX}: {default:.2f} dB, 80: {full:.2f} dB"


def test_hard_generator_objective_starts_better_from_the_inverted_estimate(ct_prior, ct_case):
    """z from the DDIM inversion of the FBP beats a random z for the same iterations, and beats the FBP."""
    truth, physics, y = ct_case

    def hard(z_init):
        result = reconstruct(y, physics, method="genreg", prior=ct_prior, n_samples=1, objective="hard",
                             max_iter=15, generator_steps=3, z_init=z_init, seed=3, alpha=1.0)
        return psnr(result.mean[0], truth), psnr(result.initial[0], truth)

    inverted, fbp = hard("inversion")
    random, _ = hard("random")
    assert inverted > random + 3.0, f"inversion {inverted:.2f} dB vs random {random:.2f} dB"
    assert inverted > fbp + 1.0, f"inversion {inverted:.2f} dB vs fbp {fbp:.2f} dB"


def test_result_of_a_real_reconstruction_reopens_identically(ct_prior, ct_case, tmp_path):
    _, physics, y = ct_case
    result = reconstruct(y, physics, method="ccdf", prior=ct_prior, n_samples=2, steps=3)
    again = load_result(result.save(tmp_path / "r.h5"))
    for name in ("mean", "std", "samples", "initial"):
        np.testing.assert_array_equal(getattr(again, name), getattr(result, name))
    assert again.metadata == result.metadata
    assert again.metadata["prior_checksum"] == ct_prior.metadata["checksum"]


def test_our_prior_drives_deepinv_diffpir(ct_prior, ct_case):
    """deepinv's DiffPIR accepts our prior as its denoiser and gives a sensible image."""
    from deepinv.optim.data_fidelity import L2
    from deepinv.sampling import DiffPIR

    truth, physics, y = ct_case
    x_init = physics.A_dagger(y).clamp(0, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        x = DiffPIR(ct_prior, L2(), sigma=0.01, max_iter=20, device="cpu")(y, physics, x_init=x_init)
    assert x.shape == x_init.shape and bool(torch.isfinite(x).all())
    # 20 DiffPIR steps do not beat FBP here, but a range or sigma mismatch would give noise (< 15 dB)
    assert psnr(x[0, 0].numpy(), truth) > 25.0


def test_complex_mri_with_a_real_prior_keeps_the_data():
    prior = _builtin("mri")
    truth = held_out_images("mri", SIZE)[1]
    physics = operators.CartesianMRI(image_size=SIZE, acceleration=4, complex_images=True)
    x = torch.stack([torch.from_numpy(truth), torch.zeros_like(torch.from_numpy(truth))])[None]
    y = physics.A(x)
    result = reconstruct(y, physics, method="ccdf", prior=prior, n_samples=2, steps=6)
    assert result.mean.shape == (2, SIZE, SIZE)
    assert psnr(result.mean[0], truth) > psnr(result.initial[0], truth)
    residual = physics.A(torch.from_numpy(result.samples)) - y
    assert float(residual.abs().max()) < 1e-3 * float(y.abs().max())


# ------------------------------------------------------------------------------ super-resolution
def test_sr_closed_form_data_consistency_matches_the_cg_step():
    """Noiseless SR: the closed-form back-projection and the CG proximal step (CG from ``z`` on
    ``A^T A d = A^T (y - A z)`` converges to the minimum-norm correction) are the same step."""
    from recon.methods.data_consistency import DataConsistency

    physics = operators.SuperResolution(32, factor=4)
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(1, 1, 32, 32, generator=generator, dtype=torch.float64)
    z = torch.rand(3, 1, 32, 32, generator=generator, dtype=torch.float64)
    y = physics.A(truth)
    closed = DataConsistency(physics, y)
    cg = DataConsistency(physics, y, cg_iterations=40, use_project=False)
    assert closed.kind == "project" and cg.kind == "cg40"
    projected = closed(z, 0.1)
    assert float((cg(z, 0.1) - projected).norm() / projected.norm()) < 1e-6
    assert float(closed.residual(projected).max()) < 1e-10


def test_ccdf_super_resolution_fits_the_data_and_beats_the_start():
    """x4 SR of the calibration image (coffee) with the natural prior: every sample reproduces the
    low-resolution data, the start (bicubic back-projected onto the data) beats plain bicubic, and
    the ccdf mean beats the start."""
    prior = _builtin("natural")
    truth = held_out_images("natural", SIZE)[2]
    physics = operators.SuperResolution(SIZE, factor=4)
    y = physics.A(torch.from_numpy(truth)[None, None])
    bicubic = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)[0, 0].numpy()
    result = reconstruct(y, physics, method="ccdf", prior=prior, n_samples=2, steps=6)
    residual = physics.A(torch.from_numpy(result.samples)) - y
    assert float(residual.abs().max()) < 1e-4 * float(y.abs().max())
    assert psnr(result.initial[0], truth) > psnr(bicubic, truth) + 0.3  # 22.6 against 21.8 dB
    assert psnr(result.mean[0], truth) > psnr(result.initial[0], truth) + 0.5  # 23.7 dB
