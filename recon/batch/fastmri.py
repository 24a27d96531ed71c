"""fastMRI files, as the fastMRI dataset ships them, single-coil and multi-coil.

What is read (names as in fastMRI)::

    /kspace              complex (slices, H, W) single-coil, (slices, coils, H, W) multi-coil;
                         H is the readout axis, W the phase-encoding axis (the one undersampled)
    /mask                optional (W,): measured columns (test and challenge files)
    /ismrmrd_header      XML; encoding/encodedSpace/matrixSize gives (x, y) = (H, W) of the k-space,
                         encoding/reconSpace/matrixSize the (x, y) of the image fastMRI reports
    /reconstruction_esc  optional (slices, x, y): single-coil target -> PSNR/SSIM
    /reconstruction_rss  optional (slices, x, y): multi-coil target  -> PSNR/SSIM
    attrs acceleration, num_low_frequency   (test files; used when there is no /mask)

Which columns were measured: the ``mask`` dataset; else, when the file has the ``acceleration``
attribute, the columns holding non-zero data (test files store zeros elsewhere); else the file is
fully sampled (train/validation) and is undersampled here with ``--acceleration`` and
``--center-fraction`` (default 0.08 at 4x, 0.04 at 8x, as in fastMRI), one mask per volume seeded from
(seed, file name) like fastMRI's own.

The image is reconstructed complex (``CartesianMRI(complex_images=True)``) at the k-space size;
the saved ``mean``, ``initial`` and ``samples`` are magnitudes centre-cropped to ``reconSpace``,
as fastMRI's targets are; ``std`` is the std of the samples' magnitudes. Multi-coil data use SENSE
with maps estimated per slice from the fully sampled centre (:mod:`recon.batch.sensitivity`), so the
result compares with the RSS target.

Noise level: ``--noise-sigma`` if given, else estimated per slice from the measured k-space values
in the outer eighth of the readout axis, where there is hardly any signal (median absolute deviation
of the real and imaginary parts, / 0.6745).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET

import numpy as np

from operators._checks import as_image_size
from recon.batch.layouts import InputFile, PostProcessing, SliceInput, center_crop, open_h5, require_dataset, to_real_channels
from recon.batch.settings import GEOMETRY_KEYS

ISMRMRD_NS = "{http://www.ismrm.org/ISMRMRD}"


def parse_header(xml) -> dict:
    """``{"encoded": (x, y), "recon": (x, y)}`` from an ISMRMRD header (bytes or str)."""
    if isinstance(xml, (bytes, np.bytes_)):
        xml = bytes(xml).decode()
    root = ET.fromstring(str(xml))

    def size(space: str) -> tuple:
        node = root.find(f"{ISMRMRD_NS}encoding/{ISMRMRD_NS}{space}/{ISMRMRD_NS}matrixSize")
        if node is None:
            raise ValueError(f"ismrmrd_header has no encoding/{space}/matrixSize")
        return int(node.find(f"{ISMRMRD_NS}x").text), int(node.find(f"{ISMRMRD_NS}y").text)

    return {"encoded": size("encodedSpace"), "recon": size("reconSpace")}


def estimate_noise_sigma(kspace: np.ndarray, columns: np.ndarray) -> float:
    """Noise std of one slice's k-space from its outer readout rows (see the module docstring)."""
    height = kspace.shape[-2]
    band = max(1, height // 16)
    edges = np.concatenate([kspace[..., :band, :], kspace[..., height - band:, :]], axis=-2)
    values = edges[..., columns]
    parts = np.concatenate([values.real.ravel(), values.imag.ravel()])
    parts = parts[parts != 0]
    if parts.size == 0:
        return 0.0
    return float(np.median(np.abs(parts - np.median(parts))) / 0.6745)


def _fastmri_like_mask(width: int, acceleration: float, center_fraction: float, pattern: str, seed: int):
    from operators import cartesian_mask

    return np.asarray(cartesian_mask(width, acceleration, center_fraction, pattern, seed), dtype=bool)


class FastMRIFile(InputFile):
    """A fastMRI ``.h5`` file (see the module docstring)."""

    layout = "fastmri"
    modality = "mri"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        with open_h5(self.path) as f:
            kspace = require_dataset(f, "kspace", self.path, ndim=(3, 4))
            if not np.issubdtype(kspace.dtype, np.complexfloating):
                raise ValueError(f"input {self.path!r}: 'kspace' should be complex, is {kspace.dtype}")
            self.n_slices = kspace.shape[0]
            self.multicoil = kspace.ndim == 4
            self.shape = kspace.shape[-2:]
            header = require_dataset(f, "ismrmrd_header", self.path, kinds=None)[()]
            try:
                sizes = parse_header(header)
            except (ET.ParseError, ValueError, AttributeError, TypeError) as err:
                raise ValueError(f"input {self.path!r}: cannot read 'ismrmrd_header': {err}") from err
            self.recon_size = as_image_size(sizes["recon"], "ismrmrd_header reconSpace matrixSize")
            if tuple(sizes["encoded"]) != tuple(self.shape):
                raise ValueError(f"input {self.path!r}: ismrmrd_header encodedSpace {sizes['encoded']} does not "
                                 f"match k-space {tuple(self.shape)}")
            self.target = "reconstruction_rss" if self.multicoil else "reconstruction_esc"
            self.has_ground_truth = self.target in f
            if self.has_ground_truth and require_dataset(f, self.target, self.path, ndim=(3,), kinds="iuf").shape[0] != self.n_slices:
                raise ValueError(f"input {self.path!r}: {self.target!r} has {f[self.target].shape[0]} slices, "
                                 f"'kspace' has {self.n_slices}")
            self.columns, self.mask_source = self._columns(f)
            if not self.columns.any():
                where = "'mask' marks" if self.mask_source == "mask" else "'kspace' holds data in"
                raise ValueError(f"input {self.path!r}: {where} none of its {self.columns.size} columns; "
                                 "there is nothing measured to reconstruct from")
            self.crop = self._crop()
            if self.has_ground_truth and any(t < c for t, c in zip(f[self.target].shape[-2:], self.crop)):
                raise ValueError(f"input {self.path!r}: {self.target!r} has images of {tuple(f[self.target].shape[-2:])}, "
                                 f"smaller than the {self.crop} the reconstruction is cropped to (ismrmrd_header "
                                 "reconSpace): the scores could not compare them")
        self.noise_sigma = self.settings.noise_sigma

    def _crop(self) -> tuple:
        """The saved image's size: reconSpace, or a square of the k-space width when the image is narrower
        (fastMRI's "FLAIR 203" rule); never taller than the image (the target is cropped to match)."""
        crop = tuple(self.recon_size)
        crop = (self.shape[1], self.shape[1]) if self.shape[1] < crop[1] else crop
        return min(crop[0], self.shape[0]), crop[1]

    def _columns(self, f):
        width = self.shape[1]
        if "mask" in f:
            mask = np.asarray(require_dataset(f, "mask", self.path, kinds="biuf")[()]).reshape(-1)
            if mask.shape != (width,):
                raise ValueError(f"input {self.path!r}: 'mask' has shape {mask.shape}, expected ({width},)")
            return mask > 0, "mask"
        if "acceleration" in f.attrs:
            sampled = np.zeros(width, dtype=bool)
            for index in range(self.n_slices):  # columns with data in any slice
                sampled |= np.abs(f["kspace"][index]).reshape(-1, width).max(axis=0) > 0
            return sampled, "data"
        acceleration = self.settings.acceleration
        if acceleration is None:
            raise ValueError(f"input {self.path!r} is fully sampled (no 'mask', no 'acceleration' attribute): pass "
                             "--acceleration (and --center-fraction) to undersample it retrospectively")
        fraction = self.settings.center_fraction or (0.08 if acceleration <= 4 else 0.04)
        seed = int.from_bytes(hashlib.sha256(f"{self.settings.seed}:{os.path.basename(self.path)}".encode())
                              .digest()[:4], "little") & 0x7FFFFFFF
        pattern = self.settings.mask_pattern or "random"  # unset: fastMRI's own random masks
        return _fastmri_like_mask(width, acceleration, fraction, pattern, seed), "generated"

    def unused_settings(self) -> set:
        """Geometry settings that change nothing for this file: left out of its output's fingerprint.

        All but the mask settings, and those too when the file says which columns were measured.
        """
        read = {"acceleration", "center_fraction", "mask_pattern"} if self.mask_source == "generated" else set()
        return set(GEOMETRY_KEYS) - read

    def read(self, index: int, seed: int) -> SliceInput:
        with open_h5(self.path) as f:
            kspace = np.asarray(f["kspace"][index])
            truth = np.asarray(f[self.target][index], dtype=np.float32) if self.has_ground_truth else None
        kspace = kspace * self.columns  # test files are already zero there; train files become undersampled
        sigma = self.noise_sigma if self.noise_sigma is not None else estimate_noise_sigma(kspace, self.columns)
        mask = np.broadcast_to(self.columns.astype(np.float32), self.shape).copy()
        physics = {"kind": "cartesian_mri", "image_size": list(self.shape), "complex_images": True, "mask": mask,
                   "noise_sigma": sigma}
        if self.multicoil:
            from recon.batch.sensitivity import estimate_sensitivity_maps

            physics["sensitivity_maps"] = estimate_sensitivity_maps(kspace, self.columns)
        crop = self.crop
        if truth is not None and tuple(truth.shape[-2:]) != tuple(crop):
            truth = np.ascontiguousarray(center_crop(truth, crop))  # as fastMRI crops its target
        post = PostProcessing(magnitude=True, crop=tuple(crop))
        return SliceInput(self.key, index, to_real_channels(kspace), physics, post, truth, seed)

    def describe(self) -> dict:
        return {**super().describe(), "coils": "multi" if self.multicoil else "single", "kspace_size": list(self.shape),
                "recon_size": list(self.recon_size), "mask_source": self.mask_source,
                "acceleration": round(float(self.columns.size / max(1, self.columns.sum())), 3)}
