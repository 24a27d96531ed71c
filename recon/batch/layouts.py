"""What the input layouts share: one slice's work, the file base class and safe HDF5 reading.

Every layout (``native``, ``fastmri``, ``lodopab``) turns one slice of its file into a
:class:`SliceInput`: plain numpy arrays and dictionaries, so that it travels to a Dask worker as
is. The worker needs nothing else: ``physics`` says which operator to build (see
:mod:`recon.batch.physics`), ``post`` how to turn the reconstruction into the saved image
(:class:`PostProcessing`: magnitude, crop, orientation), ``ground_truth`` what to score it against.

The layout modules import this one and nothing of each other; :mod:`recon.batch.formats` imports
them all to recognise and open a file, so no import runs in a circle.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from recon.files import HDF5_SUFFIXES

if TYPE_CHECKING:  # settings imports LAYOUTS from here
    from recon.batch.settings import BatchSettings

#: The layouts by name, in the order ``--format`` lists them.
LAYOUTS = ("native", "fastmri", "lodopab")


@dataclass(frozen=True)
class PostProcessing:
    """How a slice's reconstruction becomes the saved image."""

    magnitude: bool = False  # complex images (real, imaginary channels) saved as their magnitude
    crop: Optional[tuple[int, int]] = None  # centre crop to (H, W)
    transform: Optional[str] = None  # "lodopab": into the data set's orientation


@dataclass
class SliceInput:
    """One slice's work: the measurement and everything needed to reconstruct and score it."""

    key: str
    index: int
    measurement: np.ndarray
    physics: dict
    post: PostProcessing = field(default_factory=PostProcessing)
    ground_truth: Optional[np.ndarray] = None
    seed: int = 0
    # one self-validation per volume (BatchSettings.shares_choice): the middle slice makes it
    # (``reference``), the others get it as ``Choice.record()``'s (info, arrays)
    reference: bool = False
    choice: Optional[tuple] = None
    # a reference's training slices, which train its adapters or calibrate its std: (measurement, physics)
    # of other slices of its file
    neighbours: tuple = ()
    # steering for this slice's file: the ``adapt`` setting, an unset one resolved for the file's length
    # (BatchSettings.for_volume)
    adapt: Any = "off"


class InputFile:
    """Base of the layouts: a file of ``n_slices`` slices that :meth:`read` returns one at a time."""

    layout = "base"
    modality = "ct"  # "ct", "mri" or "sr": picks the default prior

    def __init__(self, path: str, settings: BatchSettings):
        self.path = os.fspath(path)
        self.key = output_key(self.path)
        self.settings = settings
        self.n_slices = 0
        self.has_ground_truth = False
        self.overridden: dict = {}  # file attributes a setting replaced: part of the output's fingerprint

    def read(self, index: int, seed: int) -> SliceInput:  # pragma: no cover - abstract
        raise NotImplementedError

    def companions(self) -> dict:
        """Other files a slice is read from (name -> path), recorded with the file's contents: one that
        appears, goes or changes makes the output another run's (LoDoPaB's ground truth)."""
        return {}

    def describe(self) -> dict:
        """Facts about the file recorded in the output's metadata and printed by ``--dry-run``."""
        return {"path": os.path.abspath(self.path), "layout": self.layout, "n_slices": self.n_slices,
                "ground_truth": self.has_ground_truth}


def output_key(path: str) -> str:
    """The output's name: the input's file name without its extension."""
    name = os.path.basename(os.fspath(path))
    for ext in (".hdf5", ".h5"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def slice_seed(seed: int, file_name: str, index: int) -> int:
    """A per-slice seed from (seed, file name, slice index): the same on any worker, in any order."""
    digest = hashlib.sha256(f"{seed}:{os.path.basename(file_name)}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


#: Run in a child process by :func:`probe_h5`: open the file, read every attribute, shape and dtype,
#: and one element of every dataset; what the child prints last is where it was.
_PROBE = """
import sys, h5py
def visit(name, obj):
    print(name, flush=True)
    dict(obj.attrs)
    if isinstance(obj, h5py.Dataset) and obj.size:
        obj[(0,) * obj.ndim] if obj.ndim else obj[()]
try:
    with h5py.File(sys.argv[1], "r") as f:
        dict(f.attrs)
        f.visititems(visit)
except Exception:
    pass
"""
_PROBED: set = set()


def probe_h5(path: str, timeout: float = 300.0) -> None:
    """Read ``path``'s whole structure once in a child process before this process opens it.

    A damaged file can crash the HDF5 library itself (a corrupted attribute message segfaults it),
    which no ``except`` can catch: the child takes that crash, and it becomes a ``ValueError`` naming
    the file and the object being read. Each file (path, size, time) is probed once per process.
    """
    import signal
    import subprocess
    import sys

    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _PROBED:
        return
    try:
        child = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValueError(f"input {path!r}: reading its structure took over {timeout:.0f} s (damaged?)") from None
    if child.returncode < 0:
        where = (child.stdout.splitlines() or ["/"])[-1]
        raise ValueError(f"input {path!r} is damaged: reading {where!r} crashed the HDF5 library "
                         f"({signal.Signals(-child.returncode).name})")
    _PROBED.add(key)


def open_h5(path: str):
    """Open an input for reading; missing or unreadable (corrupt, truncated) files become ValueError."""
    import h5py

    path = os.fspath(path)
    if os.path.isdir(path):  # "does not exist" sent a user looking for a typo
        found = sorted(n for n in os.listdir(path) if n.lower().endswith(HDF5_SUFFIXES))
        hint = (f"it holds {len(found)} .h5/.hdf5 file(s): give them, as {os.path.join(path, '*.h5')}"
                if found else "it holds no .h5 or .hdf5 file")
        raise ValueError(f"input {path!r} is a folder; inputs are HDF5 files ({hint})")
    if not os.path.isfile(path):
        raise ValueError(f"input {path!r} " + ("is not a regular file" if os.path.exists(path) else "does not exist"))
    probe_h5(path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"input {path!r} is not a readable HDF5 file (corrupt or truncated?): {err}") from err


def require_dataset(f, name: str, path: str, ndim: Optional[tuple] = None, kinds: Optional[str] = "iufc"):
    """Return dataset ``name`` of ``f``, or raise ValueError naming the file and what it has.

    A group, a scalar where ``ndim`` asks for an array, or an empty dataset or one whose dtype kind
    is not in ``kinds`` (default numbers: int, unsigned, float, complex; no text or booleans) is
    refused too.
    """
    import h5py

    if name not in f:
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise ValueError(f"input {path!r} has no {name!r} dataset (found: {found})")
    dataset = f[name]
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"input {path!r}: {name!r} should be a dataset, is a {type(dataset).__name__}")
    if ndim is not None and dataset.ndim not in ndim:
        raise ValueError(f"input {path!r}: dataset {name!r} should have {' or '.join(map(str, ndim))} "
                         f"dimensions, has shape {dataset.shape}")
    if kinds is not None and (dataset.dtype.kind not in kinds or dataset.size == 0):
        raise ValueError(f"input {path!r}: dataset {name!r} should hold numbers, has dtype {dataset.dtype} and "
                         f"shape {dataset.shape}")
    return dataset


def to_real_channels(value: np.ndarray) -> np.ndarray:
    """Complex ``(...)`` -> float32 ``(2, ...)`` (real, imaginary): deepinv's complex convention."""
    value = np.asarray(value)
    return np.stack([value.real, value.imag]).astype(np.float32)


def center_crop(array: np.ndarray, size) -> np.ndarray:
    """Crop the last two axes to ``size`` around the centre (fastMRI's ``center_crop``)."""
    height, width = array.shape[-2:]
    h, w = min(int(size[0]), height), min(int(size[1]), width)
    top, left = (height - h) // 2, (width - w) // 2
    return array[..., top:top + h, left:left + w]
