"""Operator specs: the plain dictionary a layout writes and the operator a worker builds from it.

A spec is ``{"kind": ..., "image_size": [H, W], "noise_sigma": s, ...geometry}``: numbers, lists and
numpy arrays only, so it pickles to a Dask worker. Its geometry is a :mod:`recon.geometry`
description (the one way the CLI, batch and the viewer build operators); :func:`build_physics` is
the only place the batch code builds operators. CT operators are cached per process (building the
ASTRA geometry and FBP filter is not free, and every slice of a file shares them); MRI operators
carry per-slice coil maps and are built each time, as are the cheap super-resolution operators.
"""

from __future__ import annotations

from functools import lru_cache

from recon.geometry import ParallelBeamCT, describe


def build_physics(spec: dict):
    """The ``operators`` instance a spec describes (``noise_sigma`` is passed to the method separately)."""
    description = describe(spec)
    return _cached(description) if isinstance(description, ParallelBeamCT) else description.build()  # fan beam too


def check_spec(spec: dict) -> None:
    """Build the operator ``spec`` describes once (per-slice coil maps are not in it), so that a bad geometry
    (a size <= 0, NaN angles, a source inside the image, a mask of 0.5, ...) fails when the file is
    opened, before any work, instead of on every slice."""
    build_physics(spec)


@lru_cache(maxsize=8)
def _cached(description):
    return description.build()
