"""CCDF's automatic start: the error level of the initial estimate and the margin over it."""

import pytest
import torch
import deepinv as dinv

from recon.methods import reconstruct
from methods_stand_ins import CountingBlur


def test_auto_t0_error_level_is_interpolated_between_probes_and_safe_with_nan():
    from recon.methods.ccdf import interpolate_crossing

    levels = (0.1, 0.2, 0.4)
    assert interpolate_crossing(levels, [0.9, 0.6, 0.4], 0.5) == pytest.approx(0.2 * 2 ** 0.5)  # halfway in log s
    assert interpolate_crossing(levels, [0.9, 0.8, 0.7], 0.5) == 0.4  # never falls below: the largest probe
    assert interpolate_crossing(levels, [0.4, 0.3, 0.2], 0.5) == 0.1  # below from the start: the smallest
    assert interpolate_crossing(levels, [0.9, 0.6, float("nan")], 0.5) == 0.2  # a NaN probe snaps, never NaN


def auto_margin(physics, size=32, **options):
    """The auto-t0 margin ``reconstruct`` picks for ``physics`` on a random image (stand-in prior, 2 steps)."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    result = reconstruct(physics.A(x), physics, prior=CountingBlur(), n_samples=1, steps=2, device="cpu", **options)
    return result.metadata["t0_margin"]


@pytest.mark.parametrize("kind, factor, margin", [("mri", 4, None), ("mri", 8, None), ("sr", 2, 8.0), ("sr", 8, 32.0)])
def test_auto_t0_projection_margin_grows_as_measurements_per_unknown_fall(kind, factor, margin):
    """Exact projections: margin = 2 / r within [4, 32]. MRI: r = 2 * sampled fraction (4 at 4x, 8 at 8x
    on a 128 px mask); SR: r = 1 / factor^2 (x2: 8; x8: 64, clamped to 32)."""
    import operators

    if kind == "mri":
        physics = operators.CartesianMRI(image_size=32, acceleration=factor, seed=0)
        margin = min(max(2.0 / (2 * float(physics.mask.float().mean())), 4.0), 32.0)
    else:
        physics = operators.SuperResolution(image_size=32, factor=factor)
    assert auto_margin(physics) == pytest.approx(margin, rel=0.01)


@pytest.mark.parametrize("size, views, margin", [
    (64, 8, 0.565),  # 0.159 measured bins per pixel (90% of the 8 x 91 bins see the image): inside the fit
    (64, 2, 1.2),    # 0.032: the upper clamp
    (32, 30, 0.1)])  # 1.2: over-sampled, the lower clamp
def test_auto_t0_cg_margin_grows_as_measurements_per_unknown_fall(size, views, margin):
    """CG data consistency: margin = 0.09 / (measured values per unknown) within [0.1, 1.2]; fewer views start higher."""
    import operators

    physics = operators.ParallelBeamCT(image_size=size, n_angles=views)
    assert auto_margin(physics, size) == pytest.approx(margin, abs=2e-3)


@pytest.mark.parametrize("kind", ["mri", "sr", "inpainting"])
def test_auto_t0_cg_margin_counts_what_is_measured_not_the_zero_fill(kind):
    """Masking operators keep the image's shape and zero-fill; only the measured values count.

    MRI 4x without its projection: a real image, 2 real values per sampled k-space point, so
    r = 2 * (sampled fraction), less the few k-space points a real image makes real (DC); SR x2: r = 1/4;
    deepinv's Inpainting keeping half the pixels: r = 1/2.
    """
    import operators

    if kind == "mri":
        physics = operators.CartesianMRI(image_size=32, acceleration=4, seed=0)
        ratio = 2 * float(physics.mask.float().mean())
    elif kind == "sr":
        physics, ratio = operators.SuperResolution(image_size=32, factor=2), 0.25
    else:
        mask = (torch.arange(32 * 32).reshape(1, 32, 32) % 2).float()
        physics, ratio = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=mask), 0.5
    assert auto_margin(physics, use_project=False, intensity_range=None) == pytest.approx(0.09 / ratio, rel=0.01)


def test_measurements_per_unknown_counts_coils_once_and_refuses_an_operator_that_measures_nothing():
    """Multi-coil MRI samples the same k-space points in every coil: r equals the single-coil r."""
    import operators
    from recon.methods.ccdf import measurements_per_unknown
    from recon.methods.problem import Problem

    maps = torch.ones(4, 32, 32, dtype=torch.complex64) / 2  # 4 coils, sum of |maps|^2 = 1
    single = operators.CartesianMRI(32, acceleration=4, seed=0)
    multi = operators.CartesianMRI(32, acceleration=4, seed=0, coil_maps=maps)
    x = torch.zeros(1, 1, 32, 32)

    def ratio(physics):
        return measurements_per_unknown(Problem(physics=physics, y=physics.A(x), x_init=x, denoise=None, dc=None,
                                                generator=torch.Generator()))

    assert ratio(multi) == pytest.approx(ratio(single)) == pytest.approx(2 * float(single.mask.float().mean()), rel=0.01)
    from operators.foreign import as_operator

    nothing = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="nothing is measured"):
        ratio(as_operator(nothing, nothing.A(x)))


def test_auto_t0_start_follows_the_margin_and_a_given_margin_is_kept():
    """sigma(t0) = margin * estimated error: a user's margin is used as given and moves the start."""
    import operators
    from recon.methods.schedule import time_of_sigma

    physics = operators.ParallelBeamCT(image_size=32, n_angles=8)
    y = physics.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    runs = {m: reconstruct(y, physics, prior=CountingBlur(), n_samples=1, steps=2, t0_margin=m, device="cpu")
            for m in (0.5, 2.0)}
    for margin, result in runs.items():
        meta = result.metadata
        assert meta["t0_margin"] == margin
        assert meta["t0"] == pytest.approx(max(time_of_sigma(margin * meta["estimated_initial_error"]), 0.05))
    assert runs[2.0].metadata["t0"] > runs[0.5].metadata["t0"]
    fixed = reconstruct(y, physics, prior=CountingBlur(), n_samples=1, steps=2, t0=0.3, device="cpu").metadata
    assert fixed["t0"] == 0.3 and fixed.get("t0_margin") is None
