"""The on-disk checkpoint format of our priors, written by training and read by ``load_prior``.

One ``torch.save`` dict, readable with ``weights_only=True`` (only tensors, numbers, strings, lists
and dicts)::

    {"format": "diffrecon-prior", "version": 1,
     "config": UNetConfig.to_dict(),          # rebuilds the architecture
     "state_dict": ...,                        # EMA weights of EDMDenoiser, the ones to sample with
     "metadata": {...},                        # name, training data, steps, sigma range, ...
     # training checkpoints only, for resume:
     "training": {"step": int, "model": raw weights, "optimizer": ..., "options": {...}, "history": [...]}}
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FORMAT = "diffrecon-prior"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, corrupt or incompatible."""


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path, config: dict, state_dict: dict, metadata: dict, training: dict | None = None) -> Path:
    """Write atomically (temporary file then rename), so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metadata": metadata}
    if training is not None:
        payload["training"] = training
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:  # on disk before the rename: a power cut leaves the old file or the new
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


#: how a file that ``torch.save`` wrote begins: a zip archive, or a pickle in the legacy format
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def file_head(path, size: int = 8) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def read_torch_file(path) -> object:
    """``torch.load`` with clear errors naming the file; ``weights_only=True`` first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, expected a weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    head = file_head(path)
    if not head.startswith(TORCH_MAGIC):  # torch's own message would speak of weights_only and unsafe objects
        raise CheckpointError(f"checkpoint {path} is not a file torch.save wrote (it begins {head!r}, not as a zip "
                              "archive or a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in message or "Unsupported global" in str(error):
            raise CheckpointError(f"checkpoint {path} holds Python objects that cannot be loaded safely "
                                  f"(weights_only=True refused it): {message}") from error
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read: {message}") from error


def read_checkpoint(path) -> dict:
    """Read one of our checkpoints and check its structure, naming the file and what is wrong."""
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        weights = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise CheckpointError(
                f"{path} is not a {FORMAT} checkpoint: it holds a plain state dict ({len(weights)} weight tensors) "
                "without the architecture; save one with recon.priors.checkpoint.save_checkpoint(path, "
                "UNetConfig(...).to_dict(), state_dict, metadata), or for deepinv weights use the spec "
                "'deepinv:<model>@<path>'")
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format field: {found!r}); "
                              "for deepinv weights use the spec 'deepinv:<model>@<path>'")
    version = payload.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has checkpoint version {version!r}; expected a whole number")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload['version']}, newer than this package reads ({VERSION})")
    missing = [k for k in ("config", "state_dict", "metadata") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks the fields {missing}")
    wrong = {k: type(payload[k]).__name__ for k in ("config", "state_dict", "metadata") if not isinstance(payload[k], dict)}
    if wrong:
        raise CheckpointError(f"{path}: the fields {sorted(wrong)} should be dicts, are {wrong}")
    if "training" in payload and not isinstance(payload["training"], dict):
        raise CheckpointError(f"{path}: the field 'training' should be a dict, is {type(payload['training']).__name__}")
    return payload


def state_dict_mismatch(path, expected: dict, found: dict) -> str:
    """What differs between the weights a network needs and those in ``path``, by key and shape: torch's
    own message starts with a line that names neither."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {list(getattr(found[k], 'shape', ()))} in the file, {list(expected[k].shape)} in the network"
              for k in expected if k in found
              and (not isinstance(found[k], torch.Tensor) or tuple(found[k].shape) != tuple(expected[k].shape))]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape or not tensors (e.g. {'; '.join(shapes[:2])})")
    return "; ".join(parts) or "they do not load"


def check_finite(path, state_dict: dict) -> None:
    """Weights with NaN or Inf (a run that diverged) would make every reconstruction NaN: refuse them here."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds NaN or Inf weights in {len(bad)} of {len(state_dict)} tensors "
                              f"(e.g. {bad[:3]}): the training that wrote them diverged or the file is damaged; "
                              "use an earlier checkpoint or another copy")
