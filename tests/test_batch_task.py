"""One slice's reconstruction turned into the saved arrays (``recon.batch.task.convert``)."""

import math

import numpy as np

from recon.batch.layouts import PostProcessing
from recon.batch.task import convert
from recon.result import Result
from recon.uncertainty import std_map


def _complex_result(std_scale):
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal((4, 2, 8, 8)) + 3.0).astype(np.float32)
    return Result(mean=samples.mean(0), std=std_map(samples), samples=samples, initial=samples[0],
                  metadata={"std_scale": std_scale})


def test_magnitude_std_keeps_the_held_out_calibration():
    """A complex slice saved as magnitude gets the calibrated spread of the magnitudes, not the raw one."""
    raw = convert(_complex_result(None), PostProcessing(magnitude=True))
    calibrated = convert(_complex_result(2.0), PostProcessing(magnitude=True))
    assert raw["mean"].shape == raw["std"].shape == (1, 8, 8) and raw["samples"].shape == (4, 1, 8, 8)
    np.testing.assert_allclose(calibrated["std"], raw["std"] * 2.0 * math.sqrt(1 + 1 / 4), rtol=1e-6)


def test_crop_and_no_post_processing():
    result = _complex_result(None)
    kept = convert(result, PostProcessing())
    assert kept["mean"].shape == (2, 8, 8) and np.array_equal(kept["std"], result.std)
    cropped = convert(result, PostProcessing(magnitude=True, crop=(4, 6)))
    assert cropped["mean"].shape == (1, 4, 6) and cropped["samples"].shape == (4, 1, 4, 6)
