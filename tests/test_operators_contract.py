"""The operator contract (operators/base.py) holds for every operator, ours and a wrapped deepinv one."""

import deepinv as dinv
import pytest
import torch

from operators import CartesianMRI, DeepinvOperator, ParallelBeamCT, RestrictedOperator, SuperResolution, as_operator
from operators.base import ReconOperator

N = 32

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _deepinv_tomography():
    physics = dinv.physics.Tomography(angles=12, img_width=N, circle=False, normalize=True)
    return as_operator(physics, physics.A(torch.zeros(1, 1, N, N)))


def _deepinv_mri():
    mask = torch.zeros(N, N)
    mask[:, ::3] = 1
    physics = dinv.physics.MRI(mask=mask, img_size=(2, N, N))
    return as_operator(physics, physics.A(torch.zeros(1, 2, N, N)))


CASES = {
    "ct": lambda: ParallelBeamCT(N, n_angles=12),
    "mri": lambda: CartesianMRI(N, acceleration=4, seed=0),
    "mri-complex": lambda: CartesianMRI(N, acceleration=4, seed=0, complex_images=True),
    "sr": lambda: SuperResolution(N, factor=4),
    "deepinv-tomography": _deepinv_tomography,
    "deepinv-mri": _deepinv_mri,
}


@pytest.mark.parametrize("name", CASES)
def test_every_operator_offers_the_contract(name):
    op = CASES[name]()
    assert isinstance(op, ReconOperator)
    x = torch.rand(1, *op.img_shape, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    assert tuple(y.shape[1:]) == tuple(op.measurement_shape)
    op.check_measurement(y)
    assert tuple(op.A_dagger(y, noise_sigma=0.01).shape) == (1, *op.img_shape)
    measured = op.measured_entries()
    assert measured.shape == y.shape and measured.any()
    held = op.held_out_entries(0.25, torch.Generator().manual_seed(1))
    assert held.shape == y.shape and 0 < int(held.sum()) < int(measured.sum()) and bool((held <= measured).all())
    fit = op.restricted(~held)
    assert torch.count_nonzero(fit.A(x)[held]) == 0  # the fit operator never measures a held-out entry
    assert fit.complex_images == op.complex_images and fit.n_coils == op.n_coils
    filled = op.fill_held_out(y, held)
    assert torch.equal(filled[~held], y[~held])
    assert torch.equal(op.fill_held_out(y + 50.0 * held.to(y.dtype), held), filled)  # held-out values never read
    if op.exact_projection:
        assert torch.allclose(op.project(x, y), x, atol=1e-4)  # x already fits its own data
    else:
        with pytest.raises(NotImplementedError):
            op.project(x, y)


def test_the_operators_declare_what_they_offer():
    assert CartesianMRI(N, acceleration=4).exact_projection and SuperResolution(N, factor=2).exact_projection
    assert not ParallelBeamCT(N, n_angles=8).exact_projection
    assert CartesianMRI(N, acceleration=4, complex_images=True).complex_images and not ParallelBeamCT(N, n_angles=8).complex_images
    assert _deepinv_mri().complex_images and not _deepinv_tomography().complex_images
    for op, kind in ((ParallelBeamCT(N, n_angles=8), RestrictedOperator), (CartesianMRI(N, acceleration=4), CartesianMRI)):
        assert type(op.restricted(torch.ones(1, *op.measurement_shape, dtype=torch.bool))) is kind


def test_as_operator_keeps_ours_and_wraps_a_foreign_physics_with_its_noise_model():
    ours = ParallelBeamCT(N, n_angles=12)
    assert as_operator(ours, None) is ours
    physics = dinv.physics.Tomography(angles=12, img_width=N, circle=False, normalize=True,
                                      noise_model=dinv.physics.GaussianNoise(sigma=0.1))
    y = physics.A(torch.zeros(1, 1, N, N))
    wrapped = as_operator(physics, y)
    assert isinstance(wrapped, DeepinvOperator) and wrapped.img_shape == (1, N, N)
    assert wrapped.measurement_shape == tuple(y.shape[1:]) and float(wrapped.noise_model.sigma) == pytest.approx(0.1)
    x = torch.rand(1, 1, N, N, generator=torch.Generator().manual_seed(0))
    assert torch.equal(wrapped.A(x), physics.A(x)) and torch.equal(wrapped.A_adjoint(y), physics.A_adjoint(y))
    assert "Tomography" in repr(wrapped)
