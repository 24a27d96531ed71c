"""The contract every operator in this package keeps, on top of deepinv's ``LinearPhysics``.

Methods, batch runners and the viewer rely on a few facts about an operator without knowing which one
it is: the image shape it expects (``img_shape``), the measurement shape it returns
(``measurement_shape``), a validating ``check_measurement``, a fast analytic ``A_dagger`` and an
iterative ``least_squares``. They are defined once here.
"""

from __future__ import annotations

import logging

import torch
from deepinv.optim.linear import least_squares as _dinv_least_squares
from deepinv.physics import LinearPhysics

from operators._checks import check_tensor

logger = logging.getLogger(__name__)


class ReconOperator(LinearPhysics):
    """Base class: shapes, validation and CG least squares shared by all operators.

    Subclasses set ``self.img_shape`` and ``self.measurement_shape`` (both without the batch axis)
    in ``__init__`` and implement ``A``, ``A_adjoint`` and ``A_dagger``.
    """

    img_shape: tuple
    measurement_shape: tuple
    #: The image value that means "nothing there" (air, no signal), when the physics fixes one.
    #: ``recon.reconstruct`` pins the low end of its intensity map there instead of reading it off the
    #: initial estimate, whose artefacts (streaks, aliasing) dip below the true background.
    #: ``None``: no physical floor (super-resolution of natural images).
    intensity_floor: float | None = None

    def __init__(self, img_shape: tuple, measurement_shape: tuple, **kwargs):
        kwargs.setdefault("max_iter", 50)
        kwargs.setdefault("tol", 1e-4)
        kwargs.setdefault("solver", "CG")
        # implicit backward differentiation through CG warns for small max_iter and is not needed here
        kwargs.setdefault("implicit_backward_solver", False)
        super().__init__(img_size=tuple(img_shape), **kwargs)
        self.img_shape = tuple(img_shape)
        self.measurement_shape = tuple(measurement_shape)

    # ------------------------------------------------------------------ validation
    def check_image(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a real float tensor of shape ``(B, *img_shape)``."""
        check_tensor(x, self.img_shape, "image", type(self).__name__)

    def check_measurement(self, y: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``y`` has shape ``(B, *measurement_shape)`` and is finite."""
        check_tensor(y, self.measurement_shape, "measurement", type(self).__name__, finite=True)

    def _check_adjoint_input(self, y: torch.Tensor) -> None:
        # The adjoint is also applied to residuals and random vectors, so only the shape is checked
        # here; finiteness is checked in check_measurement, on data that comes from outside.
        check_tensor(y, self.measurement_shape, "measurement", type(self).__name__)

    # ------------------------------------------------------------------ solvers
    def least_squares(self, y: torch.Tensor, max_iter: int = 50, tol: float = 1e-4, init=None):
        """Least-squares solution of ``A x = y`` by conjugate gradients (deepinv's solver).

        Slower than :meth:`A_dagger` but exact up to ``tol`` for any geometry; use it as a reference
        or where the analytic inverse is poor (few angles, fan beams with short source distance).
        """
        self.check_measurement(y)
        return _dinv_least_squares(
            self.A,
            self.A_adjoint,
            y,
            init=init,
            parallel_dim=[0],
            AAT=self.A_A_adjoint,
            ATA=self.A_adjoint_A,
            solver="CG",
            max_iter=max_iter,
            tol=tol,
        )

    def extra_repr(self) -> str:  # shown by print(op)
        return f"img_shape={self.img_shape}, measurement_shape={self.measurement_shape}"
