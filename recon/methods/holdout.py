"""Hold out part of a measurement: the ground truth a user does not have, taken from the data itself.

Self-validation (``selfvalidation.py``) reconstructs from the *fit* part of ``y`` and scores how well
each candidate predicts the *held-out* part. That only means something if the candidates never see the
held-out values, directly or through a redundancy of the operator, so the split is the operator's to
make where it has one (:meth:`operators.CartesianMRI.held_out_entries` keeps a real image's mirrored
k-space pairs together); otherwise a random share of the measured entries is held out.

The rules are the operator's (``operators.base.ReconOperator``): ``measured_entries``,
``held_out_entries``, ``restricted`` (the fit part is measured by an operator that zeroes the held-out
entries, or by the operator's own, e.g. an MRI operator with a smaller mask, which keeps its closed-form
data consistency) and ``fill_held_out`` (the fit data's initial estimate predicts the held-out entries
instead of reading them). This module holds the split and its score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

#: Share of the measured entries held out by default: enough held-out values for a stable score
#: (thousands at 128 px), little enough that the fit reconstruction stays close to the full one.
HOLDOUT_FRACTION = 0.125
#: Fewer held-out values than this give no usable score (a tiny measurement): self-validation declines.
MIN_HELD_OUT = 16


def split_seed(seed: int, index: int = 0) -> int:
    """The seed of the held-out split (the ``index``-th, where several are drawn), derived from
    ``reconstruct``'s ``seed`` but not equal to it.

    A user who simulates ``y`` with ``torch.Generator().manual_seed(s)`` and reconstructs with
    ``seed=s`` would otherwise draw the split from the same random stream as the noise: the held-out
    entries would be those of small noise (``rand < 1/8`` and ``randn`` share their bits), and the
    calibration would see a fifth of the noise it expects.
    """
    label = f"diffrecon held-out split {int(seed)}" + (f" {int(index)}" if index else "")
    digest = hashlib.sha256(label.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TooFewMeasurements(ValueError):
    """The measurement is too small to hold part of it out."""


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

    def change_z(self, physics, x_new: torch.Tensor, x_old: torch.Tensor, y: torch.Tensor) -> float:
        """How surely ``x_new`` predicts the held-out data better than ``x_old`` (batches of one): the
        paired z-score of the change in squared residual, entry by entry (negative: ``x_new`` is better).

        A lower mean misfit alone can be luck of the draw of held-out entries; the z-score sets the
        change against its own spread over those entries.
        """
        held = self.held_out.flatten()
        change = ((physics.A(x_new) - y).pow(2) - (physics.A(x_old) - y).pow(2)).flatten()[held].double()
        if change.numel() < 2 or not float(change.std()) > 0:
            return 0.0
        return float(change.mean() / (change.std() / change.numel() ** 0.5))
