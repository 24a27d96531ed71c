"""The intensity map between the user's units and the prior's [0, 1]: ranges given, found and recorded."""

import numpy as np
import pytest
import torch

from recon.methods import reconstruct
from methods_stand_ins import CountingBlur, N, tomography_case


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


def test_intensity_mapping_returns_input_units(ct):
    """Scaling y by 1000 scales every output by 1000; an offset in the image shifts the result."""
    physics, x, y = ct
    base = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    scaled = reconstruct(1000 * y, physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    np.testing.assert_allclose(scaled.mean, 1000 * base.mean, rtol=1e-3, atol=1e-3 * 1000 * np.abs(base.mean).max())
    np.testing.assert_allclose(scaled.std, 1000 * base.std, rtol=1e-3, atol=1e-3 * 1000 * base.std.max())
    shifted = reconstruct(physics.A(x + 500.0), physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    assert abs(float(np.median(shifted.mean - base.mean)) - 500.0) < 5.0


def test_user_intensity_range_is_recorded_and_used(ct):
    physics, _, y = ct
    result = reconstruct(y, physics, method="fbp", intensity_range=(0.0, 2.0))
    assert result.metadata["intensity_range"] == [0.0, 2.0]
    assert result.metadata["intensity_range_source"] == "user"


def test_auto_range_pins_the_low_end_at_the_operators_floor_when_the_estimate_reaches_it():
    """30-view FBP dips below the air in the image; the map's ``lo`` is CT's floor 0, not that dip."""
    from operators import ParallelBeamCT

    physics = ParallelBeamCT(N, n_angles=10)
    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.8
    y = physics.A(x)
    assert float(physics.A_dagger(y).min()) < -0.01  # the streaks the floor guards against
    result = reconstruct(y, physics, method="fbp")
    assert result.metadata["intensity_range"][0] == 0.0
    assert result.metadata["intensity_range_source"] == "auto, operator floor"
    # an image with no air in view (all at 500 or above) keeps the percentile rule
    offset = reconstruct(physics.A(x + 500.0), physics, method="fbp")
    assert offset.metadata["intensity_range"][0] > 400.0
    assert offset.metadata["intensity_range_source"] == "auto"


def test_operators_without_a_physical_floor_keep_the_percentile_rule(ct):
    physics, _, y = ct  # deepinv's Tomography declares no floor
    result = reconstruct(y, physics, method="fbp")
    assert result.metadata["intensity_range_source"] == "auto"
    assert result.metadata["intensity_range"][0] < 0.0


def test_the_floor_is_pinned_only_when_the_estimate_reaches_it(caplog):
    """Pinned within FLOOR_REACH above the floor and FLOOR_WARNING below; kept (with a warning) far below."""
    from recon.methods.intensity import FLOOR_REACH, IntensityMap

    def ramp(lo):  # 0.5 percentile close to ``lo``, 99.5 percentile close to 1
        return torch.linspace(lo, 1.0, 64 * 64).reshape(1, 1, 64, 64)

    assert IntensityMap.from_estimate(ramp(-0.1), floor=0.0).lo == 0.0
    assert IntensityMap.from_estimate(ramp(0.5 * FLOOR_REACH), floor=0.0).lo == 0.0
    inside = IntensityMap.from_estimate(ramp(1.5 * FLOOR_REACH), floor=0.0)
    assert inside.lo > 0.1 and inside.source == "auto"
    with caplog.at_level("WARNING"):
        far = IntensityMap.from_estimate(ramp(-1.0), floor=0.0)  # e.g. HU data: air far below 0
    assert far.lo < -0.9 and far.source == "auto"
    assert "intensity floor" in caplog.text and "intensity_range" in caplog.text


def test_ct_and_mri_operators_declare_a_zero_floor_and_sr_none():
    import operators

    for cls in (operators.ParallelBeamCT, operators.FanBeamCT, operators.ConeBeamCT, operators.CartesianMRI):
        assert cls.intensity_floor == 0.0
    assert operators.SuperResolution.intensity_floor is None


def test_complex_images_are_labelled_as_magnitude_not_floor():
    import operators

    physics = operators.CartesianMRI(image_size=32, acceleration=4, seed=0, complex_images=True)
    x = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    result = reconstruct(physics.A(x), physics, method="fbp")
    assert result.metadata["intensity_range"][0] == 0.0
    assert result.metadata["intensity_range_source"] == "auto, magnitude"


def test_user_intensity_range_offsets_only_the_real_part_of_complex_images():
    from operators import CartesianMRI

    x = torch.zeros(1, 2, N, N)
    x[:, 0, 8:24, 10:22] = 0.8
    x[:, 1, 12:20, 12:20] = 0.2
    physics = CartesianMRI(N, acceleration=2, center_fraction=0.2, complex_images=True)
    y = physics.A(x)
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=4, device="cpu", intensity_range=(-0.5, 1.5))
    mean = torch.from_numpy(result.mean)[None]
    assert float((physics.A(mean) - y).norm() / y.norm()) < 1e-4  # hard DC holds in the user's units
    assert float(mean[0, 1].mean()) == pytest.approx(float(x[0, 1].mean()), abs=1e-4)


@pytest.mark.parametrize("given", [np.array([0.0, 2.0]), torch.tensor([0.0, 2.0]), [0, 2]])
def test_intensity_range_as_an_array_or_tensor_is_used_and_recorded(ct, given):
    physics, _, y = ct
    result = reconstruct(y, physics, method="fbp", intensity_range=given)
    assert result.metadata["intensity_range"] == [0.0, 2.0]
    assert result.metadata["parameters"]["intensity_range"] == [0.0, 2.0]


@pytest.mark.parametrize("bad", [5.0, "ab", (0.0, 1.0, 2.0)])
def test_malformed_intensity_range_is_a_value_error(ct, bad):
    physics, _, y = ct
    with pytest.raises(ValueError, match="intensity_range"):
        reconstruct(y, physics, method="fbp", intensity_range=bad)
