"""Physics forward models for diffrecon, all ``deepinv.physics.LinearPhysics`` subclasses.

Each operator maps batched images ``(B, C, H, W)`` to measurements and carries ``img_shape``,
``measurement_shape``, a validating ``check_measurement``, a fast analytic ``A_dagger`` and an
iterative ``least_squares``; MRI and super-resolution also have a closed-form ``project``.

The names below are imported on first use, so that light modules of the package (the mask pattern
names in :mod:`operators.masks`) can be read without importing torch, as the command line does.
"""

from importlib import import_module

_LAZY = {
    "ReconOperator": "operators.base",
    "ParallelBeamCT": "operators.ct",
    "FanBeamCT": "operators.ct",
    "ConeBeamCT": "operators.ct",
    "CartesianMRI": "operators.mri",
    "SuperResolution": "operators.sr",
    "GaussianNoise": "operators.noise",
    "LogPoissonNoise": "operators.noise",
    "cartesian_mask": "operators.masks",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'operators' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
