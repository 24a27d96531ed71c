"""Hold out part of a measurement: the ground truth a user does not have, taken from the data itself.

Self-validation (``selfvalidation.py``) reconstructs from the *fit* part of ``y`` and scores how well
each candidate predicts the *held-out* part. That only means something if the candidates never see the
held-out values, directly or through a redundancy of the operator, so the split is the operator's to
make where it has one (:meth:`operators.CartesianMRI.held_out_entries` keeps a real image's mirrored
k-space pairs together); otherwise a random share of the measured entries is held out.

The fit part is measured by :func:`restricted`, an operator that zeroes the held-out entries (or the
operator's own ``restricted``, e.g. an MRI operator with a smaller mask, which keeps its closed-form
data consistency). Its initial estimate comes from :func:`fit_initial_estimate`, which fills the
held-out entries from their kept neighbours instead of reading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from recon.operator_kinds import complex_images

#: Share of the measured entries held out by default: enough held-out values for a stable score
#: (thousands at 128 px), little enough that the fit reconstruction stays close to the full one.
HOLDOUT_FRACTION = 0.125
#: Fewer held-out values than this give no usable score (a tiny measurement): self-validation declines.
MIN_HELD_OUT = 16


class TooFewMeasurements(ValueError):
    """The measurement is too small to hold part of it out."""


def measured_entries(physics, like: torch.Tensor) -> torch.Tensor:
    """Bool mask of the measurement entries the operator fills, from ``A`` of a fixed random image shaped
    like ``like``: masking operators zero-fill what they do not measure (unmeasured k-space, CT bins whose
    rays miss the image). A complex measurement's real and imaginary parts are entries of their own.
    What is held out here, what steering normalises by and what auto t0 counts (``ccdf``) are these entries."""
    generator = torch.Generator(device=like.device).manual_seed(0)
    x = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    y = physics.A(x)
    return (torch.view_as_real(y) if torch.is_complex(y) else y) != 0


def held_out_entries(physics, x_like: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Bool mask over the measurement (batch of one): ``True`` where an entry is held out.

    The operator's own rule when it has one (``physics.held_out_entries(fraction, generator)``), else a
    random ``fraction`` of the measured entries.
    """
    own = getattr(physics, "held_out_entries", None)
    if callable(own):
        return own(fraction, generator).to(x_like.device)
    measured = measured_entries(physics, x_like)
    draw = torch.rand(measured.shape, generator=generator, device=generator.device).to(measured.device)
    return measured & (draw < fraction)


class RestrictedPhysics(LinearPhysics):
    """``physics`` measuring only where ``keep`` is true: ``A x = keep * A_full x`` (adjoint likewise)."""

    def __init__(self, physics, keep: torch.Tensor):
        super().__init__(img_size=getattr(physics, "img_shape", None) or getattr(physics, "img_size", None))
        self.physics = physics
        self.register_buffer("keep", keep.to(torch.float32))
        self.img_shape = getattr(physics, "img_shape", None)
        self.measurement_shape = getattr(physics, "measurement_shape", None)
        self.complex_images = complex_images(physics)

    def A(self, x, **kwargs):
        return self.physics.A(x) * self.keep.to(x.dtype)

    def A_adjoint(self, y, **kwargs):
        return self.physics.A_adjoint(y * self.keep.to(y.dtype))

    def A_dagger(self, y, **kwargs):
        return self.physics.A_dagger(y * self.keep.to(y.dtype))


def restricted(physics, held_out: torch.Tensor):
    """The operator that measures only the entries not held out (the operator's own ``restricted`` when it has one)."""
    own = getattr(physics, "restricted", None)
    if callable(own):
        return own(~held_out)
    return RestrictedPhysics(physics, ~held_out)


def interpolate_held_out(y: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """``y`` with its held-out entries replaced by linear interpolation of the kept ones along the last axis.

    Sinograms and low-resolution images are smooth along a detector row or an image row, so their
    neighbours predict a held-out value well; a zero would streak the filtered back-projection.
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


def fit_initial_estimate(pseudo_inverse: Callable, physics, y: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """``A_dagger`` of ``y`` with its held-out entries predicted, never read.

    Operators with their own split (MRI) leave the held-out entries at zero, as unmeasured k-space
    is; the others have them interpolated from their kept neighbours (:func:`interpolate_held_out`).
    """
    if callable(getattr(physics, "held_out_entries", None)):
        return pseudo_inverse(y * (~held_out).to(y.dtype))
    return pseudo_inverse(interpolate_held_out(y, held_out))


@dataclass(frozen=True)
class Split:
    """A measurement split into a fit part and a held-out part."""

    held_out: torch.Tensor  # bool, measurement-shaped (batch of one)
    fit_physics: object  # measures the fit entries only

    @property
    def n_held_out(self) -> int:
        return int(self.held_out.sum())

    def misfit(self, physics, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared residual ``(A x - y)^2`` over the held-out entries."""
        residual = (physics.A(x) - y) * self.held_out.to(x.dtype)
        return residual.flatten(1).pow(2).sum(1) / max(self.n_held_out, 1)
