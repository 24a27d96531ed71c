"""``load_prior``: one entry point for built-in, our own, deepinv and diffusers priors.

Spec forms (checked in this order):

- a :class:`Prior` (returned as is, moved to ``device``);
- a built-in name, ``"ct"``, ``"mri"`` or ``"natural"`` (package data, no network);
- ``"deepinv:<model>"`` or ``"deepinv:<model>@<weights file>"`` (models in ``DEEPINV_MODELS``);
- a path to a checkpoint written by :func:`recon.priors.train`;
- a path to a diffusers ``UNet2DModel`` folder (needs diffusers).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from recon.priors.checkpoint import CheckpointError, check_finite, read_checkpoint, sha256_of, state_dict_mismatch
from recon.priors.external import DEEPINV_MODELS, is_diffusers_folder, load_deepinv_prior, load_diffusers_prior
from recon.priors.network import EDMDenoiser, UNetConfig, count_parameters
from recon.priors.prior import Prior, sigma_range

logger = logging.getLogger(__name__)

BUILTIN = ("ct", "mri", "natural")


def builtin_path(name: str) -> Path:
    """Where the package ships the weights of built-in prior ``name``."""
    return Path(str(resources.files("recon.priors") / "weights" / f"{name}.pt"))


def available_builtins() -> list[str]:
    return [name for name in BUILTIN if builtin_path(name).is_file()]


def known_specs() -> list[str]:
    return [*BUILTIN, *(f"deepinv:{m}" for m in DEEPINV_MODELS)]


def load_checkpoint_prior(path, device=None) -> Prior:
    """A prior from one of our checkpoints (exported or training), with its metadata and checksum."""
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = UNetConfig.from_dict(payload["config"])
        net = EDMDenoiser(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an unusable architecture config {payload['config']!r}: {error}") from error
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError) as error:
        detail = state_dict_mismatch(path, net.state_dict(), payload["state_dict"])
        raise CheckpointError(f"{path}: the weights do not match the architecture in the file "
                              f"(widths {list(config.widths)}, {config.channels} channel(s)): {detail}") from error
    check_finite(path, payload["state_dict"])
    metadata = {"sigma_min": 0.002, "sigma_max": 80.0, "resolution": None, "training_data": "unknown",
                **payload["metadata"]}
    metadata.update({"channels": config.channels, "checksum": sha256_of(path), "n_params": count_parameters(net),
                     "path": str(path)})
    metadata.setdefault("name", path.stem)
    metadata.setdefault("architecture", f"EDM-preconditioned UNet, widths {list(config.widths)}")
    try:
        sigma_range(metadata)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return Prior(net, metadata, multiple=net.net.multiple).to(device or "cpu")


def load_prior(spec="ct", device=None, weights=None, channels: int | None = None) -> Prior:
    """Load a prior D(x, sigma) for images in [0, 1].

    Parameters
    ----------
    spec : str, path or Prior
        ``"ct"``, ``"mri"``, ``"natural"``, ``"deepinv:<model>[@<weights file>]"``, a checkpoint path
        from ``recon train``, or a diffusers ``UNet2DModel`` folder.
    device : str or torch.device, optional
        Where to put the network (default CPU).
    weights : path, optional
        Local weights file for ``deepinv:<model>`` (same as ``@<path>``), for offline machines.
    channels : int, optional
        For external RGB models, 1 (default) serves grayscale images, 3 colour images. For a built-in
        prior or a checkpoint, the channels it was trained with: another number is refused.

    Examples
    --------
    >>> prior = load_prior("ct")
    >>> import torch
    >>> prior(torch.rand(1, 1, 64, 64), 0.1).shape
    torch.Size([1, 1, 64, 64])
    """
    if device is not None:  # "tpu", or "cuda" without a GPU: named here, not by torch mid-load
        from recon.methods.arguments import resolve_device

        device = resolve_device(device)
    if isinstance(spec, Prior):
        return spec.to(device) if device is not None else spec
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"prior spec must be a name, a 'deepinv:<model>' string, a path or a Prior, got {type(spec).__name__}")
    if str(spec).strip() in ("", "."):  # Path("") is ".": it used to be read as a folder
        raise ValueError(f"prior spec is empty; give a name ({', '.join(BUILTIN)}), 'deepinv:<model>' or a path")
    text = str(spec)
    if weights is not None and not text.lower().startswith("deepinv:"):
        raise ValueError(f"weights= is for 'deepinv:<model>' priors; {text!r} carries its own weights")
    if text in BUILTIN:
        path = builtin_path(text)
        if not path.is_file():
            raise FileNotFoundError(f"built-in prior {text!r} is not installed ({path} missing); "
                                    f"installed: {available_builtins()}")
        return _with_channels(load_checkpoint_prior(path, device), channels)
    if text.lower().startswith("deepinv:"):
        model, _, at_path = text[len("deepinv:"):].partition("@")
        if at_path and weights is not None:
            raise ValueError(f"give the deepinv weights either in the spec ({at_path}) or as weights=, not both")
        if "@" in text and not at_path.strip():  # an unset $WEIGHTS: not a request to download
            raise ValueError(f"{text!r} names no weights file after '@'; give deepinv:{model}@<file>, or "
                             f"deepinv:{model} to download the published weights")
        file = Path(at_path).expanduser() if at_path else weights
        if file is not None and Path(file).is_dir():
            raise ValueError(f"weights {file} for deepinv:{model} is a folder; give the weights file in it")
        if file is not None and not Path(file).is_file():
            raise FileNotFoundError(f"weights file {file} for deepinv:{model} does not exist")
        return load_deepinv_prior(model, weights=file, channels=1 if channels is None else channels, device=device)
    path = Path(text).expanduser()
    if path.is_dir():
        if is_diffusers_folder(path):
            return load_diffusers_prior(path, channels=channels, device=device)
        raise ValueError(f"{path} is a directory but not a diffusers model folder (no config.json)")
    if path.exists():
        return _with_channels(load_checkpoint_prior(path, device), channels)
    if path.suffix or "/" in text or "\\" in text:
        raise FileNotFoundError(f"prior checkpoint {path} does not exist")
    raise ValueError(f"unknown prior {text!r}; known names: {known_specs()}, or give a checkpoint path")


def _with_channels(prior: Prior, channels: int | None) -> Prior:
    """``prior`` if it was trained for ``channels`` (or none were asked for); a checkpoint's channels are fixed."""
    if channels is not None and channels != prior.channels:
        raise ValueError(f"prior {prior.name!r} was trained on {prior.channels}-channel images, not {channels}: "
                         "channels= chooses how external RGB models serve images; leave it unset for this prior")
    return prior


def describe(prior: Prior) -> str:
    """One line per metadata field, for the CLI and logs."""
    return "\n".join(f"{key}: {value}" for key, value in prior.metadata.items())

