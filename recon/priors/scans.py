"""Real scans that Debian packages install, and how each is split between training and evaluation.

Why these: the machines here have no internet, but three Debian packages carry real scans:

- ``invesalius-examples``: ``Cranium.inv3``, a real head CT (108 axial slices of 256 x 256 in
  Hounsfield units, 0.957 x 0.957 x 1.5 mm). An ``.inv3`` file is a tar.gz whose ``main.plist``
  gives the shape, dtype and spacing of the raw ``matrix.dat``.
- ``mricron-data``: ``ch2.nii.gz``, the Colin27 single-subject T1 MR head at 1 mm (181 x 217 x 181).
- ``insighttoolkit5-examples``: ``KmeansTest_T1UCharRaw.nii.gz``, a T1 head of *another* subject
  (2 x 2 x 3 mm, coronal slices), and ``FatMRISlice.png``, a real abdominal MR slice. Both are used
  for evaluation only: other subjects and anatomy the MR prior never saw.

Each training volume is cut along its slice axis: an evaluation slab and a tuning slice are held
out with a gap of ``GAP`` slices either side, and training sees only the blocks in between (their
axial slices and the coronal and sagittal reformats *of each block*, so no reformat crosses a
held-out slice). The splits are constants here, so the docs can name them.
"""

from __future__ import annotations

import functools
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CRANIUM_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
COLIN_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
OTHER_T1 = ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"
ABDOMEN_MR = ITK_DATA / "FatMRISlice.png"
PACKAGES = {CRANIUM_CT: "invesalius-examples", COLIN_T1: "mricron-data", OTHER_T1: "insighttoolkit5-examples",
            ABDOMEN_MR: "insighttoolkit5-examples"}

#: the HU window mapped to [0, 1] for the held-out CT images (air 0, water 0.4, dense bone 1)
CT_WINDOW_HU = (-1000.0, 1500.0)
GAP = 6


@dataclass(frozen=True)
class Split:
    """Slices (along a volume's first axis) held out for evaluation and for tuning."""

    evaluation: tuple[int, ...]
    tuning: tuple[int, ...]
    gap: int = GAP

    def excluded(self, n: int) -> np.ndarray:
        """Boolean mask of the slices training must not see (held-out slices and their gaps)."""
        out = np.zeros(n, dtype=bool)
        for k in self.evaluation + self.tuning:
            out[max(0, k - self.gap) : k + self.gap + 1] = True
        return out

    def tuning_slab(self, n_slices: int = 8) -> tuple[int, ...]:
        """``n_slices`` slices spread over the first tuning slice and its gaps: held out of training like
        it, and as far from the evaluation slab, so constants fitted on several slices stay off the
        reported ones."""
        k = self.tuning[0]
        return tuple(int(round(i)) for i in np.linspace(k - self.gap, k + self.gap, n_slices))

    def training_blocks(self, n: int) -> list[range]:
        """Runs of consecutive slices training may use."""
        blocks, start = [], None
        for k, excluded in enumerate(np.append(self.excluded(n), True)):
            if not excluded and start is None:
                start = k
            elif excluded and start is not None:
                blocks.append(range(start, k))
                start = None
        return blocks


#: head CT, slice 0 at the skull base, 107 at the vertex: 8 evaluation slices through the mid-brain
#: and orbits' roof (every other slice, 22 mm), one tuning slice at the skull base
CT_SPLIT = Split(evaluation=tuple(range(40, 56, 2)), tuning=(20,))
#: Colin27 T1 (axial index 0 at the foramen magnum): 8 evaluation slices through the ventricles and
#: basal ganglia (every third slice, 22 mm), one tuning slice through the temporal lobes
MR_SPLIT = Split(evaluation=tuple(range(70, 94, 3)), tuning=(45,))


class ScanMissing(FileNotFoundError):
    """A real scan's Debian package is not installed."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ScanMissing(f"{path} is missing: install it with `apt-get install {PACKAGES[path]}` "
                          "(or run scripts/setup_scans.sh)")
    return path


def available(*paths: Path) -> bool:
    """Whether all these scans are installed (tests and benchmarks skip without them)."""
    return all(Path(p).is_file() for p in (paths or PACKAGES))


@dataclass(frozen=True)
class Volume:
    """A scan as (slices, rows, columns) with its spacing in mm along those axes."""

    data: np.ndarray
    spacing: tuple[float, float, float]


@functools.lru_cache(maxsize=1)
def head_ct() -> Volume:
    """The InVesalius head CT in Hounsfield units, axial slices first (skull base to vertex)."""
    with tarfile.open(_require(CRANIUM_CT), "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{CRANIUM_CT} has no main.plist: not an InVesalius project")
        meta = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        matrix = meta["matrix"]
        raw = archive.extractfile(members[matrix["filename"]]).read()
    shape, dtype = tuple(matrix["shape"]), np.dtype(matrix["dtype"])
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{CRANIUM_CT}: matrix.dat holds {len(raw)} bytes, expected {shape} of {dtype}")
    data = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32)
    sx, sy, sz = (float(s) for s in meta["spacing"])
    return Volume(data, (sz, sy, sx))


def _nifti_axial(path: Path) -> Volume:
    """A NIfTI volume (RAS, as nibabel reads it) as axial slices, rows anterior at the top."""
    import nibabel

    image = nibabel.as_closest_canonical(nibabel.load(_require(path)))
    data = np.asarray(image.get_fdata(), dtype=np.float32)  # (x: R, y: A, z: S)
    zooms = image.header.get_zooms()[:3]
    axial = np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, :])  # (z, y reversed, x)
    return Volume(axial, (float(zooms[2]), float(zooms[1]), float(zooms[0])))


@functools.lru_cache(maxsize=1)
def colin_t1() -> Volume:
    """Colin27's T1 head at 1 mm, axial slices first, intensities as stored (0-254)."""
    return _nifti_axial(COLIN_T1)


@functools.lru_cache(maxsize=1)
def other_t1() -> Volume:
    """ITK's T1 head of another subject (2 x 2 x 3 mm), axial slices first."""
    return _nifti_axial(OTHER_T1)


def abdomen_mr() -> np.ndarray:
    """ITK's real abdominal MR slice (256 x 256), grayscale as stored."""
    from skimage.io import imread

    image = imread(_require(ABDOMEN_MR))
    return np.asarray(image[..., 0] if image.ndim == 3 else image, dtype=np.float32)


def reformat(block: np.ndarray, spacing: tuple[float, float, float], axis: int) -> np.ndarray:
    """Slices of ``block`` along ``axis`` (1 coronal, 2 sagittal), resampled to square pixels.

    The slice axis becomes the rows, flipped so the head's top is up, as a radiologist views them.
    """
    from skimage.transform import resize

    images = np.moveaxis(block, axis, 0)[:, ::-1]  # (n, z from top, other)
    other = spacing[2] if axis == 1 else spacing[1]
    rows = max(2, int(round(images.shape[1] * spacing[0] / other)))
    return np.stack([resize(im, (rows, im.shape[1]), order=1, anti_aliasing=True, preserve_range=True)
                     for im in images]).astype(np.float32)
