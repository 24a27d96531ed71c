"""The contract every operator keeps, on top of deepinv's ``LinearPhysics``, declared once here.

Methods, batch runners and the viewer rely on a few facts about an operator without knowing which one
it is, and read them as attributes, never by probing:

- shapes: the image shape it expects (``img_shape``) and the measurement shape it returns
  (``measurement_shape``), a validating ``check_measurement``;
- inverses: a fast analytic ``A_dagger(y, noise_sigma=None)`` (operators that can use the noise
  level take it, the others ignore it) and an iterative ``least_squares``;
- what the images are: ``complex_images``, ``n_coils``, ``intensity_floor``;
- data consistency: ``exact_projection`` and ``project`` where a closed form exists;
- held-out data for self-validation: ``measured_entries``, ``held_out_entries``, ``restricted``
  (:class:`RestrictedOperator` by default) and ``fill_held_out``.

Each has a default here; an operator overrides what it knows better. A foreign deepinv physics gets
the defaults through :class:`operators.foreign.DeepinvOperator`.
"""

from __future__ import annotations

import functools
import inspect
import logging

import numpy as np
import torch
from deepinv.optim.linear import least_squares as _dinv_least_squares
from deepinv.physics import LinearPhysics, Physics

from operators._checks import check_tensor

logger = logging.getLogger(__name__)


@functools.cache
def _physics_keywords() -> frozenset:
    """The keyword arguments deepinv's ``LinearPhysics`` and ``Physics`` take by name (read once: every
    operator, and every held-out split's restricted copy, is built through here)."""
    names = set()
    for cls in (LinearPhysics, Physics):
        names |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(names - {"self"})


class ReconOperator(LinearPhysics):
    """Base class: the contract's defaults, validation and CG least squares shared by all operators.

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
    #: Images are complex, as two channels (real, imaginary).
    complex_images: bool = False
    #: Receiver coils of a multi-coil acquisition, which sample the same points; ``None`` for one coil.
    n_coils: int | None = None
    #: :meth:`project` is an exact closed-form data-consistency step; without it methods use CG.
    exact_projection: bool = False

    def project(self, x: torch.Tensor, y: torch.Tensor, noise_sigma: float = 0.0) -> torch.Tensor:
        """The image closest to ``x`` consistent with ``y`` (operators with ``exact_projection``)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form projection; use conjugate gradients")

    # ------------------------------------------------------------------ held-out data (self-validation)
    def measured_entries(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """Bool mask over the measurement (batch of one) of the entries ``A`` fills.

        Read off ``A`` of a fixed random image (shaped like ``like``, default ``(1, *img_shape)``):
        masking operators zero-fill what they do not measure (unmeasured k-space, CT bins whose rays
        miss the image). A complex measurement's real and imaginary parts are entries of their own.
        """
        shape = tuple(like.shape) if like is not None else (1, *self.img_shape)
        device = like.device if like is not None else self._device()
        dtype = like.dtype if like is not None else torch.float32
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        y = self.A(x)
        return (torch.view_as_real(y) if torch.is_complex(y) else y) != 0

    def held_out_entries(self, fraction: float, generator: torch.Generator, like: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Bool mask over the measurement (batch of one): entries held out to score reconstructions.

        A random ``fraction`` of the measured entries; operators whose measurements are redundant (a
        real image's mirrored k-space) override this so that a held-out value cannot be read elsewhere.
        """
        measured = self.measured_entries(like)
        draw = torch.rand(measured.shape, generator=generator, device=generator.device).to(measured.device)
        return measured & (draw < fraction)

    def restricted(self, keep: torch.Tensor) -> "ReconOperator":
        """This operator measuring only where ``keep`` (a measurement mask) is true."""
        return RestrictedOperator(self, keep)

    def fill_held_out(self, y: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
        """``y`` with its held-out entries predicted from the kept ones, never read, for an initial estimate.

        Sinograms and low-resolution images are smooth along a detector row or an image row, so the
        kept neighbours along the last axis predict a held-out value well; a zero would streak a
        filtered back-projection. Operators that measure by masking (MRI) leave them at zero instead.
        """
        values = y.detach().cpu().double().numpy().reshape(-1, y.shape[-1])
        held = held_out.expand_as(y).cpu().numpy().reshape(-1, y.shape[-1])
        positions = np.arange(y.shape[-1])
        filled = values.copy()
        for row in np.flatnonzero(held.any(1)):
            kept = ~held[row]
            if kept.any():
                filled[row, held[row]] = np.interp(positions[held[row]], positions[kept], values[row, kept])
        return torch.from_numpy(filled.reshape(y.shape)).to(device=y.device, dtype=y.dtype)

    def _device(self) -> torch.device:
        tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def __init__(self, img_shape: tuple, measurement_shape: tuple, **kwargs):
        unknown = set(kwargs) - _physics_keywords()
        if unknown:  # deepinv's Physics takes **kwargs and drops them: n_angle=30 would give 180 angles
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(unknown)}")
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


class RestrictedOperator(ReconOperator):
    """``operator`` measuring only where ``keep`` is true: ``A x = keep * A_full x`` (adjoint likewise).

    The fit data of self-validation: the held-out entries are zeroed, everything else is ``operator``'s.
    """

    def __init__(self, operator: ReconOperator, keep: torch.Tensor):
        super().__init__(img_shape=operator.img_shape, measurement_shape=operator.measurement_shape)
        self.physics = operator
        self.register_buffer("keep", keep.to(torch.float32))
        self.complex_images, self.n_coils = operator.complex_images, operator.n_coils
        self.intensity_floor = operator.intensity_floor

    def A(self, x, **kwargs):
        return self.physics.A(x) * self.keep.to(x.dtype)

    def A_adjoint(self, y, **kwargs):
        return self.physics.A_adjoint(y * self.keep.to(y.dtype))

    def A_dagger(self, y, **kwargs):
        return self.physics.A_dagger(y * self.keep.to(y.dtype), **kwargs)

    def fill_held_out(self, y, held_out):
        return self.physics.fill_held_out(y, held_out)
