"""Calibration statistics on synthetic samples where the truth is known."""

import numpy as np
import pytest

from recon.result import Result
from recon.uncertainty import (GAUSSIAN_COVERAGE, apply_calibration, calibrate, calibration, object_mask, spearman,
                               std_map)


def _gaussian_case(seed, std_scale_error=1.0, shape=(1, 96, 96)):
    """Truth = mean + N(0, s^2) with a spatially varying s; the reported std is s * std_scale_error."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(size=shape)).astype(np.float32) * 0.1
    mean = rng.uniform(size=shape).astype(np.float32)
    truth = mean + s * rng.normal(size=shape).astype(np.float32)
    return Result(mean=mean, std=s * std_scale_error), truth


def test_std_map_is_the_sample_std_without_pooling_and_zero_for_one_sample():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(5, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(std_map(samples, pooling=0), samples.std(0, ddof=1), rtol=1e-6)
    assert not std_map(samples[:1]).any()


def test_pooled_std_keeps_a_uniform_spread_and_pools_only_within_each_image_plane():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(6, 2, 16, 16)) * np.array([1.0, 3.0])[None, :, None, None]
    pooled = std_map(samples)
    assert pooled.shape == (2, 16, 16) and pooled.dtype == np.float32
    # channel 1's spread is 3x channel 0's: pooling in the plane never mixes the channels
    assert np.sqrt((pooled[1] ** 2).mean() / (pooled[0] ** 2).mean()) == pytest.approx(3.0, rel=0.1)
    # the mean variance is kept, and the pixel-to-pixel scatter of the estimate shrinks
    raw = std_map(samples, pooling=0)
    assert (pooled.astype(np.float64) ** 2).mean() == pytest.approx((raw.astype(np.float64) ** 2).mean(), rel=0.02)
    assert pooled[0].std() < 0.7 * raw[0].std()


def test_pooled_std_of_eight_posterior_draws_covers_near_the_gaussian_95_percent():
    """With K = 8 each pixel's variance has 7 degrees of freedom: 2 of its std cover a Gaussian error only
    about 91 % of the time; pooled over neighbouring pixels they come near 95 %."""
    rng = np.random.default_rng(2)
    k, shape = 8, (1, 128, 128)
    posterior_std = np.exp(np.linspace(-1, 1, 128))[None, None, :] * np.ones(shape)  # varies slowly across the image
    truth = posterior_std * rng.normal(size=shape)  # the truth is one more posterior draw
    draws = posterior_std * rng.normal(size=(k, *shape))
    error = np.abs(draws.mean(0) - truth)  # variance (1 + 1/K) v
    factor = np.sqrt(1 + 1 / k)
    raw = float((error <= 2 * factor * std_map(draws, pooling=0)).mean())
    pooled = float((error <= 2 * factor * std_map(draws)).mean())
    assert raw < 0.925
    assert 0.935 < pooled < 0.965


def test_honest_gaussian_std_covers_68_and_95_percent():
    result, truth = _gaussian_case(0)
    stats = calibration(result, truth)
    assert abs(stats["coverage_1std"] - GAUSSIAN_COVERAGE[1]) < 0.02
    assert abs(stats["coverage_2std"] - GAUSSIAN_COVERAGE[2]) < 0.01
    assert stats["spearman_std_error"] > 0.3  # larger std, larger error


def test_coverage_over_the_object_leaves_out_the_background_that_any_std_covers():
    """A head in air: the std fits the error nowhere in the head, and the air's exact pixels lift the whole
    image's coverage; the object's figure is computed on the head alone."""
    rng = np.random.default_rng(3)
    truth = np.zeros((1, 64, 64), np.float32)
    truth[0, 16:48, 16:48] = rng.uniform(0.2, 1.0, size=(32, 32))
    head = object_mask(truth)
    assert head.sum() == 32 * 32 and head[0, 16:48, 16:48].all()
    mean = truth + np.where(head, rng.normal(scale=0.1, size=truth.shape), 0).astype(np.float32)
    stats = calibration(Result(mean=mean, std=np.full_like(truth, 0.05)), truth)  # half the error's std
    expected = float((np.abs(mean - truth) <= 0.1)[head].mean())
    assert stats["coverage_2std_object"] == pytest.approx(expected)
    assert stats["coverage_2std_object"] < 0.75 < stats["coverage_2std"]  # the air (3/4 of the image) hides it
    # a std that only tells air from head ranks the error over the image, not within the head
    unrelated = np.where(head, 0.05 + 0.01 * rng.uniform(size=truth.shape), 0.01).astype(np.float32)
    ranked = calibration(Result(mean=mean, std=unrelated), truth)
    assert ranked["spearman_std_error"] > 0.5 and abs(ranked["spearman_std_error_object"]) < 0.1
    constant = np.full((1, 8, 8), 0.5, np.float32)
    assert not object_mask(constant).any()  # no range, no object: nothing above its minimum
    assert np.isnan(calibration(Result(mean=constant, std=constant), constant)["coverage_2std_object"])


def test_calibrate_recovers_the_factor_an_overconfident_std_is_off_by():
    pairs = [_gaussian_case(seed, std_scale_error=0.5) for seed in range(3)]
    results, truths = zip(*pairs)
    assert calibration(results[0], truths[0])["coverage_2std"] < 0.75  # too narrow before
    scale = calibrate(results, truths)
    assert scale == pytest.approx(2.0, rel=0.05)
    held_out, truth = _gaussian_case(10, std_scale_error=0.5)
    fixed = apply_calibration(held_out, scale)
    assert abs(calibration(fixed, truth)["coverage_2std"] - GAUSSIAN_COVERAGE[2]) < 0.015
    assert fixed.metadata["std_calibration_scale"] == pytest.approx(scale)
    np.testing.assert_array_equal(fixed.mean, held_out.mean)  # only the std changes


def test_spearman_matches_known_values():
    x = np.arange(50, dtype=float)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties


def test_shape_mismatch_and_bad_scale_are_rejected():
    result, truth = _gaussian_case(0)
    with pytest.raises(ValueError, match="shape"):
        calibration(result, truth[:, :10])
    with pytest.raises(ValueError, match="scale"):
        apply_calibration(result, 0.0)


def test_truth_of_the_same_size_but_another_layout_is_rejected_not_reshaped():
    result, truth = _gaussian_case(0, shape=(1, 32, 64))
    with pytest.raises(ValueError, match="shape"):
        calibration(result, truth.reshape(1, 64, 32))
    with pytest.raises(ValueError, match="shape"):
        calibrate([result], [truth.reshape(64, 32)])
    # a missing or extra channel axis of one is fine
    assert calibration(result, truth[0])["rmse"] == pytest.approx(calibration(result, truth)["rmse"])


def test_calibrate_rejects_unequal_numbers_of_results_and_truths_and_bad_k():
    (r1, t1), (r2, _) = _gaussian_case(1), _gaussian_case(2)
    with pytest.raises(ValueError, match="ground truth"):
        calibrate([r1, r2], [t1])  # zip would silently drop the second result
    with pytest.raises(ValueError, match="k"):
        calibrate([r1], [t1], k=0.0)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_std_map_is_finite_and_relative_at_extreme_scales(scale):
    """float32 squares overflow to inf above ~1e19 and vanish below ~1e-19: the std is computed in float64."""
    samples = np.random.default_rng(0).normal(1.0, 0.1, size=(4, 1, 8, 8)).astype(np.float32)
    expected = std_map(samples)
    scaled = std_map((samples.astype(np.float64) * scale).astype(np.float32))
    assert np.isfinite(scaled).all() and scaled.dtype == np.float32
    np.testing.assert_allclose(scaled / scale, expected, rtol=1e-4)


@pytest.mark.parametrize("bad", ["nan truth", "inf std", "negative std", "nan mean"])
def test_non_finite_or_negative_inputs_are_refused_not_scored(bad):
    """A NaN compares false, so it would count as not covered (or a NaN std as uncovered) without a word."""
    result, truth = _gaussian_case(3, shape=(1, 16, 16))
    if bad == "nan truth":
        truth[0, 2, 3] = np.nan
    elif bad == "nan mean":
        result.mean[0, 0, 0] = np.nan
    else:
        result.std[0, 1, 1] = np.inf if bad == "inf std" else -0.1
    with pytest.raises(ValueError, match="NaN or Inf|negative"):
        calibration(result, truth)
    with pytest.raises(ValueError, match="NaN or Inf|negative"):
        calibrate([result], [truth])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 0.0, "two"])
def test_a_std_scale_must_be_a_finite_positive_number(scale):
    result, truth = _gaussian_case(4, shape=(1, 16, 16))
    with pytest.raises(ValueError, match="scale"):
        calibration(result, truth, scale=scale)
    with pytest.raises(ValueError, match="scale"):
        apply_calibration(result, scale)


@pytest.mark.parametrize("n", [10, 20, 37, 100])
def test_calibrate_meets_its_target_on_the_pixels_it_was_fitted_on(n):
    """np.quantile's interpolation gave a scale just short of it (0.900 at n = 10 for a 0.9545 target)."""
    rng = np.random.default_rng(n)
    result = Result(mean=np.zeros((1, 1, n), np.float32), std=np.ones((1, 1, n), np.float32))
    truth = rng.normal(size=(1, 1, n)).astype(np.float32)
    scale = calibrate([result], [truth])
    assert calibration(apply_calibration(result, scale), truth)["coverage_2std"] >= GAUSSIAN_COVERAGE[2]
    assert calibration(apply_calibration(result, scale * 0.999), truth)["coverage_2std"] < GAUSSIAN_COVERAGE[2]


def test_calibrate_refuses_a_zero_scale_from_pixels_without_error():
    truth = np.zeros((1, 64, 64), np.float32)
    truth[0, :8, :8] = np.random.default_rng(0).normal(size=(8, 8))
    result = Result(mean=np.zeros_like(truth), std=np.ones_like(truth))
    with pytest.raises(ValueError, match="no error at all"):
        calibrate([result], [truth])


def test_a_second_calibration_is_recorded_as_the_product_of_both():
    result = Result(mean=np.zeros((1, 4, 4), np.float32), std=np.ones((1, 4, 4), np.float32))
    twice = apply_calibration(apply_calibration(result, 2.0), 3.0)
    assert float(twice.std.max()) == 6.0 and twice.metadata["std_calibration_scale"] == 6.0
    assert "std_calibration_scale" not in result.metadata and float(result.std.max()) == 1.0


@pytest.mark.parametrize("samples, pooling, match", [
    (np.zeros((32, 32)), 0.7, "axis 0"),  # one image was read as 32 samples of rows
    (np.zeros((4, 1, 8, 8)), -1.0, "pooling"),
    (np.zeros((4, 1, 8, 8)), float("nan"), "pooling"),
    (np.where(np.arange(256).reshape(4, 1, 8, 8) == 9, np.nan, 0.0), 0.7, "1 NaN or Inf"),
])
def test_std_map_refuses_what_it_would_misread(samples, pooling, match):
    with pytest.raises(ValueError, match=match):
        std_map(samples, pooling=pooling)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_a_calibrated_std_map_refuses_a_scale_that_is_not_a_finite_number_of_zero_or_more(scale):
    from recon.uncertainty import calibrated_std_map

    with pytest.raises(ValueError, match="std_scale"):
        calibrated_std_map(np.random.default_rng(0).normal(size=(4, 1, 8, 8)), scale)


def test_spearman_is_nan_on_nan_like_scipy_and_refuses_other_shapes():
    from scipy.stats import spearmanr

    a, b = np.arange(6.0), np.array([1.0, 3.0, 2.0, np.nan, 5.0, 4.0])
    assert np.isnan(spearman(a, b)) and np.isnan(spearmanr(a, b)[0])
    assert np.isnan(spearman([], []))
    with pytest.raises(ValueError, match="one shape"):
        spearman(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one shape"):
        spearman(np.zeros(5), np.zeros(6))
