"""`Result` and its HDF5 layout: the one place that layout is written and read.

Layout of a result file (one reconstruction; batch outputs stack slices on axis 0 of the same names)::

    /mean      float32 (C, H, W) or (C, D, H, W)   posterior mean, in the input's units
    /std       float32, same shape                  std over the samples, pooled and scaled (recon.uncertainty.calibrated_std_map)
    /initial   float32, same shape                  the starting estimate (e.g. FBP)
    /samples   float32 (K, C, ...)                  the K posterior samples (optional)
    attrs:     format="diffrecon-result", format_version=1, metadata=<JSON of Result.metadata>

JSON has no tuples, so ``metadata`` writes a tuple as ``{"__tuple__": [items]}`` (at any depth) and
reads it back as a tuple: metadata round-trips equal. Files written before this encoding hold lists
there, and load as lists. A dict whose only key is ``"__tuple__"`` is therefore refused on save, and
so are what JSON would change without a word: a key that is not a string (``{1: "a"}`` would load
as ``{"1": "a"}``) and a set (it would load as its text); the error names where in the metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from recon.files import fresh_temp, move_into_place

FORMAT = "diffrecon-result"
FORMAT_VERSION = 1
ARRAYS = ("mean", "std", "initial", "samples")
TUPLE_KEY = "__tuple__"  # {"__tuple__": [...]} in the metadata JSON is a tuple


def _to_numpy(name: str, value) -> Optional[np.ndarray]:
    """``value`` as float32; a complex array is refused (the cast would drop its imaginary part unsaid)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if np.iscomplexobj(value):
        raise ValueError(f"Result {name} is complex; a result holds real images: pass its magnitude (abs) or a part")
    return value.astype(np.float32, copy=False)


@dataclass
class Result:
    """A reconstruction: posterior mean, per-pixel std, the samples, the initial estimate, metadata.

    Arrays are numpy ``float32`` in the measurement's units, without the batch axis: ``(C, H, W)``,
    ``samples`` is ``(K, C, H, W)``.
    """

    mean: np.ndarray
    std: np.ndarray
    samples: Optional[np.ndarray] = None
    initial: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)
    #: self-validation's choice (``recon.methods.selfvalidation.Choice``) when it ran, for
    #: ``reconstruct(..., choice=...)`` on other slices of the volume; not written to files
    choice: Optional[object] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("mean", "std"):
            if getattr(self, name) is None:
                raise TypeError(f"Result needs a {name} array, got None")
        for name in ARRAYS:
            setattr(self, name, _to_numpy(name, getattr(self, name)))
        if self.std.shape != self.mean.shape:
            raise ValueError(f"std shape {self.std.shape} does not match mean shape {self.mean.shape}")

    def save(self, path, overwrite: bool = False, include_samples: bool = True) -> str:
        """Write the result to ``path`` (HDF5). Refuses to replace an existing file unless asked."""
        import h5py

        path = os.fspath(path)
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        text = encode_metadata(self.metadata)  # metadata that would not load back is refused before any file is made
        tmp = fresh_temp(path)  # a new name: never a file or link someone left at "<path>.tmp"
        try:
            with h5py.File(tmp, "w") as f:
                write_attrs(f, self.metadata, text)
                for name in ARRAYS:
                    value = getattr(self, name)
                    if value is None or (name == "samples" and not include_samples):
                        continue
                    f.create_dataset(name, data=value, compression="gzip", shuffle=True)
            move_into_place(tmp, path, overwrite)  # a crash never leaves a half-written result under the final name
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path


def write_attrs(group, metadata: dict, text: Optional[str] = None) -> None:
    """Stamp an HDF5 group with the format marker and the metadata as JSON (``text``: already encoded)."""
    group.attrs["format"] = FORMAT
    group.attrs["format_version"] = FORMAT_VERSION
    group.attrs["metadata"] = encode_metadata(metadata) if text is None else text


def encode_metadata(metadata: dict) -> str:
    """The metadata as JSON, tuples marked; ``ValueError`` naming what JSON would not give back as it was."""
    return json.dumps(_mark_tuples(metadata), sort_keys=True, default=_json_default)


def read_metadata(group) -> dict:
    """Inverse of :func:`write_attrs`; raises ``ValueError`` if the group is not ours."""
    if group.attrs.get("format") != FORMAT:
        raise ValueError(f"{group.file.filename} is not a diffrecon result (no format={FORMAT!r} attribute)")
    return decode_metadata(group.attrs.get("metadata", "{}"))


def decode_metadata(text) -> Any:
    """Parse the metadata JSON, turning ``{"__tuple__": [...]}`` back into tuples.

    ``ValueError`` for anything that is not such JSON: text that does not parse, and nesting too
    deep for Python's parser (a hostile file's ``[[[[...]]]]`` would raise ``RecursionError``).
    """
    try:
        return json.loads(text, object_hook=_unmark_tuple)
    except RecursionError:
        raise ValueError("the metadata JSON is nested too deeply to read") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"the metadata is not valid JSON: {err}") from None


def _mark_tuples(value: Any, where: str = "metadata") -> Any:
    """Tuples -> ``{"__tuple__": [...]}``, at any depth (``json`` would silently make them lists).

    Non-string keys and sets are refused (``where`` names the place): JSON would turn them into
    strings, and a result must load back as it was saved.
    """
    if isinstance(value, tuple):
        return {TUPLE_KEY: [_mark_tuples(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_mark_tuples(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        raise ValueError(f"{where} is a {type(value).__name__}, which JSON cannot store (it would load back as "
                         "text); store a list or tuple instead")
    if isinstance(value, dict):
        if set(value) == {TUPLE_KEY}:
            raise ValueError(f"metadata cannot hold a dict whose only key is {TUPLE_KEY!r}: that is how tuples are "
                             f"stored, so {where} would load back as a tuple; rename the key")
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r} ({type(key).__name__}), but JSON keys are strings, "
                                 f"so it would not load back as it was; use string keys (e.g. {str(key)!r})")
        return {k: _mark_tuples(v, f"{where}[{k!r}]") for k, v in value.items()}
    return value


def _unmark_tuple(obj: dict) -> Any:
    if len(obj) == 1 and TUPLE_KEY in obj and isinstance(obj[TUPLE_KEY], list):
        return tuple(obj[TUPLE_KEY])
    return obj


def _json_default(value: Any):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if type(value).__name__ == "Tensor" and hasattr(value, "tolist"):  # a torch tensor, as its numbers (not its repr)
        return value.detach().cpu().tolist()
    return str(value)


def load_result(path) -> Result:
    """Read a file written by :meth:`Result.save`. Arrays come back identical, and metadata of JSON's kinds
    (numbers, text, lists, tuples, dicts with text keys) equal; NumPy and torch values come back as numbers
    or lists, and other objects (a Path, a date) as their text."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file: {err}") from err
    with f:
        try:
            metadata = read_metadata(f)
            arrays = {name: (f[name][()] if name in f else None) for name in ARRAYS}
            if arrays["mean"] is None or arrays["std"] is None:
                raise ValueError("it has no 'mean' or 'std' dataset")
            return Result(metadata=metadata, **arrays)
        except Exception as err:  # noqa: BLE001 - a damaged or foreign file: one error naming it
            raise ValueError(f"{path} is not a readable diffrecon result: {err}") from err
