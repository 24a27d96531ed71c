"""Statistics over posterior samples: the std map and its calibration.

A std map is only useful if it is honest: ``calibration`` measures how often the truth falls inside
mean +- 1 and +- 2 std (ideal for Gaussian errors: 68.3% and 95.4%) and whether large std marks
large error (Spearman rank correlation). Few samples from an approximate sampler usually give too
narrow intervals; ``calibrate`` fits one scale for the std on images with known truth and
``apply_calibration`` rescales a result with it.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import numpy as np

from recon.methods.checks import check_number

#: Coverage of mean +- k std for a Gaussian, the target of calibration.
GAUSSIAN_COVERAGE = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}


#: Width (Gaussian sigma, pixels) over which :func:`std_map` pools the samples' variance in the image
#: plane. A variance from K = 8 samples has 7 degrees of freedom, so 2 of its std cover a Gaussian
#: error only 91 % of the time even for exact posterior draws; pooling about six neighbouring pixels
#: brings that near 95 %. Chosen on the real-scan benchmark's tuning slices (docs/steering.md).
POOLING_SIGMA = 0.7

#: The object of an image with known truth: pixels whose truth is above this share of its range (above
#: its minimum). Air around a head or a padded border holds a third to a half of a scan's pixels; there
#: the error is near zero and any std covers it, so whole-image coverage overstates how well the std
#: covers the error of the anatomy.
OBJECT_LEVEL = 0.05


def object_mask(ground_truth) -> np.ndarray:
    """Pixels of the object in ``ground_truth``: above :data:`OBJECT_LEVEL` of its range."""
    truth = np.asarray(ground_truth, dtype=np.float64)
    if truth.size == 0:
        raise ValueError("object_mask needs an image, got an empty array")
    low, high = float(truth.min()), float(truth.max())
    return truth > low + OBJECT_LEVEL * (high - low)


def std_map(samples, pooling: float = POOLING_SIGMA) -> np.ndarray:
    """Standard deviation over axis 0 (the K samples) per pixel, its variance averaged over a Gaussian
    neighbourhood of ``pooling`` pixels in the last two (image) axes; computed in float64; zeros when K = 1.

    ``pooling=0`` gives each pixel's own sample std. Samples with NaN or Inf are refused: the pooling would
    spread each one over its neighbours.
    """
    samples = np.asarray(samples)
    if samples.ndim < 3:  # an (H, W) image would be read as H samples of rows
        raise ValueError(f"std_map takes samples on axis 0 and an image in the last two, (K, ..., H, W); got "
                         f"shape {samples.shape}")
    pooling = check_number("pooling", pooling, 0.0)
    if not np.isfinite(samples).all():
        raise ValueError(f"the samples hold {int((~np.isfinite(samples)).sum())} NaN or Inf values")
    if samples.shape[0] < 2:
        return np.zeros(samples.shape[1:], dtype=np.float32)
    # in float64: float32 squares overflow above ~1e19 and vanish below ~1e-19
    variance = samples.var(axis=0, ddof=1, dtype=np.float64)
    if pooling and variance.ndim >= 2:
        from scipy.ndimage import gaussian_filter

        variance = gaussian_filter(variance, sigma=(0,) * (variance.ndim - 2) + (pooling, pooling), mode="reflect")
    return np.sqrt(variance).astype(np.float32)


def calibrated_std_map(samples, std_scale) -> np.ndarray:
    """:func:`std_map` (pooled) scaled by a held-out calibration's ``std_scale`` (``None``: unscaled).

    The map predicts the error of the samples' mean: a mean of K posterior draws is off by
    ``(1 + 1/K)`` posterior variances, hence ``std_scale * sqrt(1 + 1/K)``.
    """
    std = std_map(samples)
    if std_scale is None:
        return std
    std_scale = check_number("std_scale", std_scale, 0.0)
    return (std * np.float32(std_scale * math.sqrt(1 + 1 / np.asarray(samples).shape[0]))).astype(np.float32)


def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    for group in np.split(np.arange(len(values)), boundaries):
        if len(group) > 1:
            ranks[order[group]] = ranks[order[group]].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two arrays of one shape (flattened); NaN if either is constant, holds
    NaN or Inf (as scipy's ``spearmanr``), or has fewer than two values."""
    if np.shape(a) != np.shape(b):  # flattened, other shapes would pair unrelated pixels
        raise ValueError(f"spearman needs two arrays of one shape, got {np.shape(a)} and {np.shape(b)}")
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    ra, rb = _rank(a), _rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _mean_std(result):
    """The result's mean and std as float64; NaN, Inf or a negative std refused (they would score as covered
    or not covered without saying why)."""
    mean, std = np.asarray(result.mean, dtype=np.float64), np.asarray(result.std, dtype=np.float64)
    for name, values in (("mean", mean), ("std", std)):
        if not np.isfinite(values).all():
            raise ValueError(f"the result's {name} has {int((~np.isfinite(values)).sum())} NaN or Inf values")
    if (std < 0).any():
        raise ValueError(f"the result's std has {int((std < 0).sum())} negative values")
    return mean, std


def _check_truth(result, ground_truth) -> np.ndarray:
    truth = np.asarray(ground_truth, dtype=np.float64)
    if not np.isfinite(truth).all():
        raise ValueError(f"ground truth has {int((~np.isfinite(truth)).sum())} NaN or Inf values")
    if truth.shape != np.shape(result.mean):
        # only axes of length one may differ (e.g. a missing channel axis); never reorder pixels
        squeezed = tuple(s for s in truth.shape if s != 1) == tuple(s for s in np.shape(result.mean) if s != 1)
        truth = truth.reshape(np.shape(result.mean)) if squeezed else truth
    if truth.shape != np.shape(result.mean):
        raise ValueError(f"ground truth shape {truth.shape} does not match the result's {np.shape(result.mean)}")
    return truth


def over_object(std, error, ground_truth) -> tuple[float, float]:
    """``(coverage, spearman)``: 2-std coverage of ``error`` by ``std`` and Spearman(std, |error|) over the
    object of ``ground_truth`` alone (:func:`object_mask`); NaN for both where there is no object."""
    std, error = np.asarray(std), np.abs(np.asarray(error))
    on_object = object_mask(ground_truth)
    if not on_object.any():
        return float("nan"), float("nan")
    return float((error <= 2 * std)[on_object].mean()), spearman(std[on_object], error[on_object])


def calibration(result, ground_truth, scale: float = 1.0) -> dict:
    """Coverage of mean +- 1 and 2 std and rank correlation of std with |error|.

    Returns a dict with ``coverage_1std``, ``coverage_2std`` (fractions of pixels), their Gaussian
    targets, ``spearman_std_error``, the same two over the object only (``coverage_2std_object``,
    ``spearman_std_error_object``; :func:`object_mask`: the whole image's figures count the
    background too, where small std and small error agree), ``rmse`` and ``mean_std``. ``scale``
    multiplies the std first.

    Examples
    --------
    >>> from recon.result import Result
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(1, 64, 64)).astype(np.float32)
    >>> r = Result(mean=np.zeros_like(truth), std=np.ones_like(truth))
    >>> round(calibration(r, truth)["coverage_2std"], 2)
    0.95
    """
    mean, std = _mean_std(result)
    truth = _check_truth(result, ground_truth)
    error = np.abs(mean - truth)
    std = std * check_number("scale", scale, 0.0, low_inclusive=False)
    coverage_object, spearman_object = over_object(std, error, truth)
    return {
        "coverage_1std": float((error <= std).mean()),
        "coverage_2std": float((error <= 2 * std).mean()),
        "coverage_2std_object": coverage_object,
        "spearman_std_error_object": spearman_object,
        "target_1std": GAUSSIAN_COVERAGE[1],
        "target_2std": GAUSSIAN_COVERAGE[2],
        "spearman_std_error": spearman(std, error),
        "rmse": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "mean_std": float(std.mean()),
    }


def calibrate(results: Sequence, ground_truths: Iterable, target: float = GAUSSIAN_COVERAGE[2], k: float = 2.0) -> float:
    """Scale ``s`` such that mean +- k*s*std covers the fraction ``target`` of pixels over the set.

    The pooled ratios ``|error| / std`` are sorted and their ``target`` quantile (the smallest ratio
    with at least that share at or below it) divided by ``k``: the smallest scale at which the k-std
    interval covers ``target`` of all calibration pixels. Pixels with zero std and zero error are
    covered at any scale; zero std with an error never is. A scale of 0 (the target met by pixels
    without error alone) is refused: it would erase the std.
    """
    results, ground_truths = list(results), list(ground_truths)
    if len(results) != len(ground_truths):
        raise ValueError(f"calibrate needs one ground truth per result, got {len(results)} results and {len(ground_truths)} ground truths")
    if not (float(k) > 0 and math.isfinite(float(k))):
        raise ValueError(f"k must be a finite number > 0, got {k}")
    ratios = []
    for result, truth in zip(results, ground_truths):
        mean, std = _mean_std(result)
        error = np.abs(mean - _check_truth(result, truth))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(std > 0, error / std, np.where(error > 0, np.inf, 0.0))
        ratios.append(ratio.ravel())
    if not ratios:
        raise ValueError("calibrate needs at least one (result, ground truth) pair")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target coverage must be in (0, 1), got {target}")
    pooled = np.concatenate(ratios)
    scale = float(np.quantile(pooled, target, method="inverted_cdf")) / float(k)
    if not math.isfinite(scale):
        raise ValueError("more pixels have error with zero std than the target allows; the std map cannot be calibrated")
    if scale == 0:
        raise ValueError(f"at least {target:.1%} of the pixels have no error at all (an exact background?), so any "
                         "scale covers them and the fit says 0; calibrate on the object alone (e.g. crop to it)")
    return scale


def apply_calibration(result, scale: float):
    """A copy of ``result`` with std (and nothing else) multiplied by ``scale``. ``std_calibration_scale`` in
    its metadata is the product of every scale applied to it, so it always says how far the std was scaled."""
    scale = check_number("scale", scale, 0.0, low_inclusive=False)
    metadata = dict(result.metadata or {})
    calibrated = copy.deepcopy(result)
    calibrated.std = (np.asarray(result.std) * scale).astype(np.float32)
    calibrated.metadata = {**metadata, "std_calibration_scale": metadata.get("std_calibration_scale", 1.0) * scale}
    return calibrated
