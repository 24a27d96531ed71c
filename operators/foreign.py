"""A deepinv physics that is not one of this package's operators, behind the same contract.

``reconstruct`` accepts any deepinv ``LinearPhysics``. :func:`as_operator` wraps a foreign one in a
:class:`DeepinvOperator`, so everything downstream reads the contract of
:class:`operators.base.ReconOperator` (shapes, complex images, held-out entries, ...) as attributes,
with its defaults, instead of probing each physics for what it may offer.
"""

from __future__ import annotations

import torch

from operators.base import ReconOperator

#: deepinv operator classes whose images are complex, as two channels (real, imaginary).
COMPLEX_CLASSES = ("MRI", "MultiCoilMRI", "DynamicMRI")


def _is_deepinv_complex(physics) -> bool:
    return any(cls.__name__ in COMPLEX_CLASSES and cls.__module__.startswith("deepinv")
               for cls in type(physics).__mro__)


class DeepinvOperator(ReconOperator):
    """A foreign deepinv ``LinearPhysics`` with the contract's defaults.

    The measurement shape is read off a measurement ``y`` (``(B, *measurement_shape)``), the image
    shape off ``A_adjoint(y)``; deepinv's MRI classes have complex images; data consistency runs
    through conjugate gradients; held-out entries are a random share of the measured ones. The noise
    model is the wrapped physics' own.
    """

    def __init__(self, physics, y: torch.Tensor):
        measurement_shape = tuple(int(s) for s in (y.shape[1:] if y.dim() >= 4 else y.shape))
        with torch.no_grad():
            img_shape = tuple(int(s) for s in physics.A_adjoint(y.reshape(-1, *measurement_shape)[:1]).shape[1:])
        super().__init__(img_shape=img_shape, measurement_shape=measurement_shape)
        self.physics = physics
        self.noise_model = physics.noise_model
        self.complex_images = _is_deepinv_complex(physics)

    @property
    def wrapped_name(self) -> str:
        return type(self.physics).__name__

    def A(self, x, **kwargs):
        return self.physics.A(x, **kwargs)

    def A_adjoint(self, y, **kwargs):
        return self.physics.A_adjoint(y, **kwargs)

    def A_dagger(self, y, noise_sigma=None, **kwargs):
        return self.physics.A_dagger(y, **kwargs)

    def extra_repr(self) -> str:
        return f"wrapping {self.wrapped_name}, " + super().extra_repr()


def as_operator(physics, y) -> ReconOperator:
    """``physics`` itself when it is one of this package's operators, else wrapped (:class:`DeepinvOperator`).

    ``y`` is a measurement of ``physics`` (with its batch axis), which fixes a foreign physics' shapes.
    """
    if isinstance(physics, ReconOperator):
        return physics
    return DeepinvOperator(physics, torch.as_tensor(y, dtype=torch.float32))
