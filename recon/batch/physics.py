"""Operator specs: the plain dictionary a layout writes and the operator a worker builds from it.

A spec is ``{"kind": ..., "image_size": [H, W], "noise_sigma": s, ...geometry}``: numbers, lists and
numpy arrays only, so it pickles to a Dask worker. :func:`build_physics` is the only place the batch
code constructs operators. CT operators are cached per process (building the ASTRA geometry and FBP
filter is not free, and every slice of a file shares them); MRI operators carry per-slice coil maps
and are built each time.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

_CT_KINDS = ("parallel_beam_ct", "fan_beam_ct")


def build_physics(spec: dict):
    """The ``operators`` instance a spec describes (``noise_sigma`` is passed to the method separately)."""
    kind = spec["kind"]
    if kind in _CT_KINDS:
        return _cached_ct(json.dumps({k: v for k, v in spec.items() if k != "noise_sigma"}, sort_keys=True))
    if kind == "cartesian_mri":
        from operators import CartesianMRI

        kwargs = {"complex_images": bool(spec.get("complex_images", False))}
        if spec.get("mask") is not None:
            kwargs["mask"] = np.asarray(spec["mask"], dtype=np.float32)
        else:
            kwargs.update(acceleration=spec["acceleration"], center_fraction=spec["center_fraction"],
                          pattern=spec["pattern"], seed=spec["mask_seed"])
        if spec.get("sensitivity_maps") is not None:
            kwargs["coil_maps"] = np.asarray(spec["sensitivity_maps"], dtype=np.complex64)
        return CartesianMRI(tuple(spec["image_size"]), **kwargs)
    if kind == "super_resolution":
        from operators import SuperResolution

        return SuperResolution(tuple(spec["image_size"]), factor=spec["factor"], filter=spec.get("filter", "bicubic"),
                               channels=spec.get("channels", 1))
    raise ValueError(f"unknown operator kind {kind!r}")


def check_spec(spec: dict) -> None:
    """Build the operator ``spec`` describes once (per-slice coil maps are not in it), so that a bad geometry
    (a size <= 0, NaN angles, a source inside the image, a mask of 0.5, ...) fails when the file is
    opened, before any work, instead of on every slice."""
    build_physics(spec)


@lru_cache(maxsize=8)
def _cached_ct(key: str):
    spec = json.loads(key)
    common = {"n_detectors": spec["n_detectors"], "channels": spec.get("channels", 1)}
    for name in ("detector_spacing", "pixel_size"):
        if spec.get(name) is not None:
            common[name] = spec[name]
    if spec.get("angles") is not None:
        common["angles"] = np.asarray(spec["angles"], dtype=np.float64)
    else:
        common["n_angles"] = spec["n_angles"]
    if spec["kind"] == "parallel_beam_ct":
        from operators import ParallelBeamCT

        return ParallelBeamCT(tuple(spec["image_size"]), **common)
    from operators import FanBeamCT

    if "angles" not in common:
        common["n_angles"] = spec["n_angles"]
    return FanBeamCT(tuple(spec["image_size"]), source_distance=spec["source_distance"],
                     detector_distance=spec["detector_distance"], **common)
