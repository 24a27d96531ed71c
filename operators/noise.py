"""Measurement noise: Gaussian (deepinv's) and low-dose CT photon statistics.

CT sinograms here are attenuation line integrals ``p = -log(I / I0)`` (dimensionless when the image
is in attenuation per unit length and ``pixel_size`` is in that length unit; see :mod:`operators.ct`).
A detector bin receiving ``I0`` photons in air counts ``N ~ Poisson(I0 exp(-p))`` photons through the
object, and the measured sinogram is ``-log(N / I0)``. Zero counts (photon starvation) would give an
infinite line integral, so counts are clamped below at ``min_counts`` (0.1 photon by default, the
usual convention of low-dose CT simulators).

Data consistency needs one Gaussian std for whatever noise model an operator carries;
:func:`measurement_noise_sigma` holds every rule that turns a model (ours or deepinv's) into that
number, so the methods, the readers of datasets and the simulators agree.
"""

from __future__ import annotations

import logging
import math

import torch
from deepinv.physics import GaussianNoise
from deepinv.physics import LogPoissonNoise as DeepinvLogPoissonNoise
from deepinv.physics import PoissonNoise as DeepinvPoissonNoise
from deepinv.physics.noise import NoiseModel

from operators._checks import as_positive_float

__all__ = ["GaussianNoise", "LogPoissonNoise", "gaussian_sigma", "log_poisson_std", "deepinv_poisson_std",
           "measurement_noise_sigma"]

logger = logging.getLogger(__name__)


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


def log_poisson_std(y: torch.Tensor, photons: float, mu: float = 1.0, min_counts: float = 1.0) -> float:
    """RMS over the bins of the post-log noise std of a sinogram ``y`` whose line integrals are ``mu * y``.

    A bin that counts ``N = photons * exp(-mu y)`` photons (clamped at ``min_counts``) has post-log
    std ``1 / (mu sqrt(N))`` in ``y``'s units. One rule for our model (``mu = 1``), deepinv's
    ``LogPoissonNoise(N0, mu)`` and LoDoPaB-CT's observations (``mu = mu_max``).
    """
    counts = (float(photons) * torch.exp(-float(mu) * y.detach().double())).clamp_min(float(min_counts))
    return float((1.0 / counts).mean().sqrt()) / float(mu)


def deepinv_poisson_std(model, y: torch.Tensor) -> float | None:
    """RMS std of deepinv's Poisson or log-Poisson noise at the measurement ``y``; None for other models.

    - ``LogPoissonNoise(N0, mu)``: :func:`log_poisson_std` with counts clamped at one photon;
    - ``PoissonNoise(gain)``: ``sqrt(gain * y)`` (``sqrt(y)`` when not normalised).
    """
    if isinstance(model, DeepinvLogPoissonNoise):
        return log_poisson_std(y, float(model.N0.flatten()[0]), float(model.mu.flatten()[0]), 1.0)
    if isinstance(model, DeepinvPoissonNoise):
        gain = float(model.gain.flatten()[0])
        variance = y.detach().double().clamp_min(0) * (gain if bool(model.normalize) else 1.0)
        return float(variance.mean().sqrt())
    return None


def measurement_noise_sigma(physics, y: torch.Tensor | None = None) -> float:
    """Gaussian noise std of ``physics.noise_model`` in measurement units (0 when there is none).

    Signal-dependent models get the RMS over the measurement of their per-bin std, read off the
    measured ``y``:

    - our low-dose CT model (:class:`LogPoissonNoise`): post-log std ``1 / sqrt(counts)``,
      counts ``I0 exp(-y)`` (the rule the LoDoPaB reader uses);
    - deepinv's ``LogPoissonNoise`` and ``PoissonNoise``: :func:`deepinv_poisson_std`.

    A model with no Gaussian level that ``y`` cannot give one either counts as noiseless, with a
    warning that says how to pass the level instead.
    """
    model = getattr(physics, "noise_model", None)
    if isinstance(model, LogPoissonNoise) and y is not None:
        sigma = model.post_log_std(y)
    else:
        sigma = deepinv_poisson_std(model, y) if y is not None else None
        sigma = gaussian_sigma(model) if sigma is None else sigma
    if sigma is None:
        logger.warning("noise model %s has no Gaussian sigma: data consistency treats the measurement as "
                       "noiseless; pass noise_sigma=<std in measurement units> to reconstruct() to use its level",
                       type(model).__name__)
        return 0.0
    if not (math.isfinite(sigma) and sigma >= 0):  # GaussianNoise(sigma=-0.5) is accepted by deepinv
        raise ValueError(f"physics.noise_model ({type(model).__name__}) gives a noise std of {sigma}; it must be a "
                         "finite number >= 0 (or pass noise_sigma=)")
    return sigma


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
        self.I0 = as_positive_float(I0, "I0 (photons)")
        self.min_counts = as_positive_float(min_counts, "min_counts")

    def counts(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Noisy photon counts for a sinogram of line integrals."""
        expected = self.I0 * torch.exp(-sinogram)
        return torch.poisson(expected, generator=self.rng)

    def post_log_std(self, sinogram: torch.Tensor) -> float:
        """RMS over the bins of the post-log noise std ``1 / sqrt(counts)``, counts ``I0 e^{-p}``
        clamped at ``min_counts``: the Gaussian level that data consistency uses for this model."""
        return log_poisson_std(sinogram, self.I0, 1.0, self.min_counts)

    def forward(self, x: torch.Tensor, seed: int | None = None, **kwargs) -> torch.Tensor:
        self.rng_manual_seed(seed)
        counts = self.counts(x).clamp_min(self.min_counts)
        return -torch.log(counts / self.I0)
