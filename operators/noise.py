"""Measurement noise: Gaussian (deepinv's) and low-dose CT photon statistics.

CT sinograms here are attenuation line integrals ``p = -log(I / I0)`` (dimensionless when the image
is in attenuation per unit length and ``pixel_size`` is in that length unit; see :mod:`operators.ct`).
A detector bin receiving ``I0`` photons in air counts ``N ~ Poisson(I0 exp(-p))`` photons through the
object, and the measured sinogram is ``-log(N / I0)``. Zero counts (photon starvation) would give an
infinite line integral, so counts are clamped below at ``min_counts`` (0.1 photon by default, the
usual convention of low-dose CT simulators).
"""

from __future__ import annotations

import torch
from deepinv.physics import GaussianNoise
from deepinv.physics.noise import NoiseModel

__all__ = ["GaussianNoise", "LogPoissonNoise", "gaussian_sigma"]


def gaussian_sigma(model) -> float | None:
    """Std of a noise model's Gaussian ``sigma``: 0 without a model (or deepinv's ``ZeroNoise``), None
    when the model has no Gaussian level (Poisson, ...), so callers decide what an unknown level means."""
    if model is None or type(model).__name__ == "ZeroNoise":
        return 0.0
    sigma = getattr(model, "sigma", None)
    if sigma is None:
        return None
    if torch.is_tensor(sigma):
        return float(sigma.flatten()[0]) if sigma.numel() else 0.0
    return float(sigma)


class LogPoissonNoise(NoiseModel):
    """Low-dose CT noise on attenuation line integrals: ``-log(max(Poisson(I0 e^{-p}), c) / I0)``.

    Unlike deepinv's ``LogPoissonNoise`` (which has an extra normalisation ``mu`` and returns
    ``inf`` on zero counts), this one takes the sinogram in physical line-integral units and never
    returns a non-finite value.

    Parameters
    ----------
    I0 : float
        Incident photons per detector bin (higher = less noise; clinical low dose ~1e4, LoDoPaB 4096).
    min_counts : float
        Lower clamp of the counts before the log.
    rng : torch.Generator, optional
        Generator for reproducible noise.

    Examples
    --------
    >>> import torch
    >>> noise = LogPoissonNoise(I0=1e4, rng=torch.Generator().manual_seed(0))
    >>> y = noise(torch.full((1, 1, 4, 4), 2.0))
    >>> bool(torch.isfinite(y).all())
    True
    """

    def __init__(self, I0: float = 1e4, min_counts: float = 0.1, rng: torch.Generator | None = None):
        super().__init__(rng=rng)
        if not I0 > 0:
            raise ValueError(f"I0 must be > 0 photons, got {I0}")
        if not min_counts > 0:
            raise ValueError(f"min_counts must be > 0, got {min_counts}")
        self.I0 = float(I0)
        self.min_counts = float(min_counts)

    def counts(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Noisy photon counts for a sinogram of line integrals."""
        expected = self.I0 * torch.exp(-sinogram)
        return torch.poisson(expected, generator=self.rng)

    def post_log_std(self, sinogram: torch.Tensor) -> float:
        """RMS over the bins of the post-log noise std ``1 / sqrt(counts)``, counts ``I0 e^{-p}``
        clamped at ``min_counts``: the Gaussian level that data consistency uses for this model."""
        counts = (self.I0 * torch.exp(-sinogram.detach().double())).clamp_min(self.min_counts)
        return float((1.0 / counts).mean().sqrt())

    def forward(self, x: torch.Tensor, seed: int | None = None, **kwargs) -> torch.Tensor:
        self.rng_manual_seed(seed)
        counts = self.counts(x).clamp_min(self.min_counts)
        return -torch.log(counts / self.I0)
