"""LoDoPaB-CT observation files, with their ground truth when it lies beside them.

The dataset (Leuschner et al., Scientific Data 2021; files ``observation_{part}_{nnn}.hdf5`` and
``ground_truth_{part}_{nnn}.hdf5``, 128 slices per file, the last file of a part fewer):

* ``data`` in an observation file: ``(n, 1000, 513)`` float32 post-log sinograms of a 2D
  parallel-beam geometry made with ODL: 1000 angles ``(k + 1/2) pi / 1000`` (cell centres of
  [0, pi)), 513 detector bins covering ``[-0.13 sqrt(2), 0.13 sqrt(2)]`` m;
* ``data`` in a ground-truth file: ``(n, 362, 362)`` images on ``[-0.13, 0.13]^2`` m, attenuation
  divided by ``mu_max = 81.35858`` /m (3071 HU), so values lie in [0, 1];
* observation values are ``-log(N / N0) / mu_max`` with ``N ~ Poisson(N0 exp(-mu_max A x))``,
  ``N0 = 4096`` photons, zero counts replaced by 0.1; ``A x`` integrates over metres, so the
  observations are in the ground truth's units times metres.

How they are read here:

* the operator is our ``ParallelBeamCT`` with the same angles, 513 bins of ``362 sqrt(2) / 513``
  pixels and ``pixel_size = 0.26 / 362`` m, so the observations are used as they are, in their
  units, and the reconstruction comes out in the ground truth's [0, 1] units;
* the image is reconstructed on a 368 x 368 grid (the prior needs multiples of 8; the three extra
  pixels on each side lie outside the object disc) and centre-cropped to 362 x 362;
* ODL's geometry (detector coordinate ``s = x cos(phi) + y sin(phi)``, array axis 0 = x, axis 1 = y)
  and ASTRA's (``s = col cos(phi) - row sin(phi)``) differ by a quarter turn of the image: outputs
  are rotated so that they line up with the dataset's ground-truth arrays pixel for pixel
  (:func:`to_dataset_orientation`);
* the noise level handed to the method is the root-mean-square of the per-bin post-log standard
  deviation ``sqrt(exp(mu_max y) / N0) / mu_max`` (counts clipped at one photon);
* the ground truth is ``ground_truth_*`` in the same folder, found by replacing ``observation`` with
  ``ground_truth`` in the file name; PSNR and SSIM use the truth's own range per slice (as dival's
  ``PSNR`` with ``data_range = max - min``).
"""

from __future__ import annotations

import math
import os

import numpy as np

from recon.batch.layouts import InputFile, PostProcessing, SliceInput, open_h5, require_dataset
from recon.batch.settings import GEOMETRY_KEYS

MU_MAX = 81.35858
PHOTONS_PER_PIXEL = 4096
N_ANGLES, N_DETECTORS, IMAGE_SIZE = 1000, 513, 362
DOMAIN_HALF_WIDTH = 0.13  # metres
RECON_SIZE = 368  # IMAGE_SIZE rounded up to a multiple of 8
PIXEL_SIZE = 2 * DOMAIN_HALF_WIDTH / IMAGE_SIZE
DETECTOR_SPACING = IMAGE_SIZE * math.sqrt(2) / N_DETECTORS  # in pixels


def angles() -> np.ndarray:
    """The dataset's projection angles: cell centres of 1000 equal parts of [0, pi)."""
    return (np.arange(N_ANGLES) + 0.5) * math.pi / N_ANGLES


def to_dataset_orientation(array: np.ndarray) -> np.ndarray:
    """Our (ASTRA) image orientation -> the dataset's (ODL) array orientation, on the last two axes."""
    return np.rot90(array, k=-1, axes=(-2, -1))


def noise_sigma(observation: np.ndarray) -> float:
    """RMS of the post-log noise std over the sinogram (see the module docstring)."""
    import torch

    from operators.noise import log_poisson_std

    return log_poisson_std(torch.from_numpy(observation.astype(np.float64)), PHOTONS_PER_PIXEL, MU_MAX, 1.0)


def ground_truth_path(path: str) -> str:
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, name.replace("observation", "ground_truth"))


class LoDoPaBFile(InputFile):
    """An ``observation_*.hdf5`` file of LoDoPaB-CT (see the module docstring)."""

    layout = "lodopab"
    modality = "ct"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        with open_h5(self.path) as f:
            data = require_dataset(f, "data", self.path, ndim=(3,), kinds="iuf")
            if data.shape[1:] != (N_ANGLES, N_DETECTORS):
                raise ValueError(f"input {self.path!r}: LoDoPaB observations are (n, {N_ANGLES}, {N_DETECTORS}), "
                                 f"'data' has shape {data.shape}")
            self.n_slices = data.shape[0]
        self.truth_path = ground_truth_path(self.path)
        self.has_ground_truth = "observation" in os.path.basename(self.path) and os.path.isfile(self.truth_path)
        if self.has_ground_truth:
            with open_h5(self.truth_path) as f:
                truth = require_dataset(f, "data", self.truth_path, ndim=(3,), kinds="iuf")
                if truth.shape != (self.n_slices, IMAGE_SIZE, IMAGE_SIZE):
                    raise ValueError(f"ground truth {self.truth_path!r} has shape {truth.shape}, expected "
                                     f"({self.n_slices}, {IMAGE_SIZE}, {IMAGE_SIZE}) to match {self.path!r}")
        self.physics = {"kind": "parallel_beam_ct", "image_size": [RECON_SIZE, RECON_SIZE],
                        "angles": angles().tolist(), "n_angles": N_ANGLES, "n_detectors": N_DETECTORS,
                        "detector_spacing": DETECTOR_SPACING, "pixel_size": PIXEL_SIZE}

    def companions(self) -> dict:
        """The ground-truth file the slices are scored against, when there is one."""
        return {"ground_truth": self.truth_path} if self.has_ground_truth else {}

    def unused_settings(self) -> set:
        """Every geometry setting: the dataset fixes its geometry, so none changes this file's numbers."""
        return set(GEOMETRY_KEYS)

    def read(self, index: int, seed: int) -> SliceInput:
        with open_h5(self.path) as f:
            observation = np.asarray(f["data"][index], dtype=np.float32)
        truth = None
        if self.has_ground_truth:
            with open_h5(self.truth_path) as f:
                truth = np.asarray(f["data"][index], dtype=np.float32)
        sigma = self.settings.noise_sigma
        physics = {**self.physics, "noise_sigma": noise_sigma(observation) if sigma is None else float(sigma)}
        post = PostProcessing(crop=(IMAGE_SIZE, IMAGE_SIZE), transform="lodopab")
        return SliceInput(self.key, index, observation[None], physics, post, truth, seed)

    def describe(self) -> dict:
        return {**super().describe(), "ground_truth_file": self.truth_path if self.has_ground_truth else None,
                "image_size": [IMAGE_SIZE, IMAGE_SIZE], "recon_grid": RECON_SIZE}
