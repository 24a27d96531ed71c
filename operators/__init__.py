"""Physics forward models for diffrecon, all ``deepinv.physics.LinearPhysics`` subclasses.

Each operator maps batched images ``(B, C, H, W)`` to measurements and keeps the contract of
:class:`operators.base.ReconOperator` (shapes, a validating ``check_measurement``, a fast analytic
``A_dagger``, an iterative ``least_squares``, what its images are, held-out entries); MRI and
super-resolution also have a closed-form ``project``. :func:`as_operator` gives a foreign deepinv
physics the same contract.

The names below are imported on first use, so that light modules of the package (the mask pattern
names in :mod:`operators.masks`) can be read without importing torch, as the command line does.
"""

from importlib import import_module

_LAZY = {
    "ReconOperator": "operators.base",
    "RestrictedOperator": "operators.base",
    "DeepinvOperator": "operators.foreign",
    "as_operator": "operators.foreign",
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
