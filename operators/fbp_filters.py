"""Ramp filters for filtered back-projection, applied in torch along the detector axis.

Filtering in torch (not in ASTRA) keeps FBP identical on CPU and CUDA and differentiable. The ramp
is built from the band-limited spatial kernel of Kak & Slaney (eq. 61, ch. 3), which avoids the DC
offset of a naive ``|f|`` ramp, and is then apodised by one of the usual windows.
"""

from __future__ import annotations

import math

import torch

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
_ALIASES = {"ramp": "ram-lak", "ramlak": "ram-lak", "ram_lak": "ram-lak", "shepp_logan": "shepp-logan",
            "hanning": "hann"}


def canonical_filter(name: str) -> str:
    """Return the canonical filter name or raise ``ValueError`` listing the accepted ones."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in FILTERS:
        raise ValueError(f"unknown FBP filter {name!r}; expected one of {FILTERS}")
    return key


def ramp_filter(n_detectors: int, filter_name: str = "ram-lak", dtype=torch.float64, device="cpu"):
    """Frequency response (length ``P // 2 + 1`` for ``rfft``) and padded length ``P``.

    The response is that of a unit-spacing detector; callers divide by the detector spacing.
    """
    name = canonical_filter(filter_name)
    padded = max(64, 2 ** math.ceil(math.log2(2 * n_detectors)))
    n = torch.cat([torch.arange(0, padded // 2 + 1), torch.arange(-(padded // 2) + 1, 0)]).to(torch.float64)
    kernel = torch.zeros(padded, dtype=torch.float64)
    kernel[0] = 0.25
    odd = (n.abs() % 2) == 1
    kernel[odd] = -1.0 / (math.pi * n[odd]) ** 2
    response = 2.0 * torch.fft.rfft(kernel).real  # ~ |nu| for nu in [0, 1/2] cycles / sample
    nu = torch.fft.rfftfreq(padded, dtype=torch.float64)  # [0, 1/2]
    if name == "shepp-logan":
        response = response * torch.sinc(nu)
    elif name == "cosine":
        response = response * torch.cos(math.pi * nu)
    elif name == "hamming":
        response = response * (0.54 + 0.46 * torch.cos(2 * math.pi * nu))
    elif name == "hann":
        response = response * torch.cos(math.pi * nu) ** 2
    return response.to(device=device, dtype=dtype), padded


def filter_sinogram(sino: torch.Tensor, filter_name: str = "ram-lak") -> torch.Tensor:
    """Ramp-filter ``sino`` along its last (detector) axis, zero-padded to avoid wrap-around."""
    n_det = sino.shape[-1]
    real_dtype = torch.float64 if sino.dtype == torch.float64 else torch.float32
    response, padded = ramp_filter(n_det, filter_name, dtype=real_dtype, device=sino.device)
    spectrum = torch.fft.rfft(sino.to(real_dtype), n=padded, dim=-1)
    return torch.fft.irfft(spectrum * response, n=padded, dim=-1)[..., :n_det].to(sino.dtype)
