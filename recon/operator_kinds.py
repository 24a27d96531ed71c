"""Operator kinds, the modality each one images, and the modality's built-in prior.

One vocabulary for every front end: ``reconstruct`` picks its default prior here, ``recon
reconstruct`` reads its ``--operator`` names here, ``recon batch`` its ``operator`` setting and each
input's modality, and the viewer its default prior. Light on purpose (no torch): the CLI and the
viewer's widget module import it.
"""

from __future__ import annotations

from typing import Any

#: The operator kinds, as ``recon batch`` and native input files spell them.
KINDS = ("parallel_beam_ct", "fan_beam_ct", "cartesian_mri", "super_resolution")
#: Short names a user may give instead (``recon reconstruct --operator``, the viewer).
SHORT_NAMES = {"ct": "parallel_beam_ct", "fan": "fan_beam_ct", "mri": "cartesian_mri", "sr": "super_resolution"}
#: The modality of each kind: what the built-in prior is chosen by.
MODALITIES = {"parallel_beam_ct": "ct", "fan_beam_ct": "ct", "cartesian_mri": "mri", "super_resolution": "sr"}
#: Each modality's built-in prior.
DEFAULT_PRIORS = {"ct": "ct", "mri": "mri", "sr": "natural"}
#: Operator classes (ours and deepinv's, by name, so nothing is imported) -> modality.
_CLASS_MODALITIES = {"ParallelBeamCT": "ct", "FanBeamCT": "ct", "ConeBeamCT": "ct", "Tomography": "ct",
                     "CartesianMRI": "mri", "MRI": "mri", "MultiCoilMRI": "mri",
                     "SuperResolution": "sr", "Downsampling": "sr"}


def operator_kind(name: str) -> str:
    """The operator kind for a user's name (a short name ``ct``, ``fan``, ``mri``, ``sr``, or a kind)."""
    if name in KINDS:
        return name
    if name not in SHORT_NAMES:
        names = ", ".join([*SHORT_NAMES, *KINDS])
        raise ValueError(f"operator must be one of {names}; got {name!r}")
    return SHORT_NAMES[name]


def modality_of(operator: Any) -> str:
    """``"ct"``, ``"mri"`` or ``"sr"`` for a kind, a short name, a modality or an operator instance.

    ``ValueError`` for an operator whose modality is not known (a foreign deepinv physics).
    """
    if isinstance(operator, str):
        return operator if operator in DEFAULT_PRIORS else MODALITIES[operator_kind(operator)]
    for cls in type(operator).__mro__:
        if cls.__name__ in _CLASS_MODALITIES:
            return _CLASS_MODALITIES[cls.__name__]
    raise ValueError(f"the modality of a {type(operator).__name__} operator is not known, so there is no default "
                     f"prior for it; name one: a built-in ({', '.join(DEFAULT_PRIORS.values())}), a weights path or "
                     "a Prior")


def default_prior(operator: Any) -> str:
    """The built-in prior of ``operator``'s modality (see :func:`modality_of`): ct, mri or natural."""
    return DEFAULT_PRIORS[modality_of(operator)]
