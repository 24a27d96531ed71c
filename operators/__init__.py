"""Physics forward models for diffrecon, all ``deepinv.physics.LinearPhysics`` subclasses.

Each operator maps batched images ``(B, C, H, W)`` to measurements and carries ``img_shape``,
``measurement_shape``, a validating ``check_measurement``, a fast analytic ``A_dagger`` and an
iterative ``least_squares``; MRI and super-resolution also have a closed-form ``project``.
"""

from operators.base import ReconOperator
from operators.ct import ConeBeamCT, FanBeamCT, ParallelBeamCT
from operators.masks import cartesian_mask
from operators.mri import CartesianMRI
from operators.noise import GaussianNoise, LogPoissonNoise
from operators.sr import SuperResolution

__all__ = [
    "ReconOperator",
    "ParallelBeamCT",
    "FanBeamCT",
    "ConeBeamCT",
    "CartesianMRI",
    "SuperResolution",
    "GaussianNoise",
    "LogPoissonNoise",
    "cartesian_mask",
]
