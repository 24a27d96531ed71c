"""``recon simulate``: a user's images as a study in the batch's native layout, with the ground truth.

The images (any format :func:`recon.io.read_images` reads) become the ground truth in the priors'
range, and their simulated measurements the study's ``/measurement``:

- **Intensities**: images in Hounsfield units (CT DICOM, or any image whose minimum is below
  -500) are mapped as the built-in CT prior's training data (``recon.priors.data.ct_attenuation``:
  -1000 HU at 0, 1500 HU at 1, above 1 kept); other images are divided by the 99.5th percentile of
  their bright pixels (above 5 % of the 99.9th percentile, so a few hot pixels do not set the scale)
  and clipped to [0, 1]; a warning says when much of an image is negative (and becomes 0) or nearly
  black. The map is stored (``intensity_window``: the source
  value at 0 and at 1) so a result can be read in the source's units.
- **CT**: parallel-beam sinograms with ``n_angles`` views over [0, pi). Noise is Gaussian
  (std ``noise`` x the root-mean-square of the clean sinogram) or, with ``dose``, photon counts
  ``Poisson(I0 exp(-p))`` with ``p`` the line integrals in physical units (water 0.19 / cm, the
  pixel size from the source, else 1 mm), stored divided by the same scale as in LoDoPaB-CT.
- **MRI**: single-coil complex k-space (fastMRI's centred orthonormal FFT) under a Cartesian mask
  (``acceleration``, ``center_fraction``, ``mask_pattern``, ``seed``) stored as ``/mask``; Gaussian
  noise of std ``noise`` x the root-mean-square of the measured values, on measured samples only.
- **SR**: images downsampled by ``factor`` (bicubic); Gaussian noise as for CT.

``noise_sigma`` (the Gaussian std, or the post-log noise level for ``dose``) is stored so the
methods know it, and what :func:`recon.io.export.export_result` needs to write results like the
source (``affine`` and ``source_space``, what its mm are measured from; ``source_units``, ``source_modality``,
``source_dicom``: patient and study).
An existing file is never replaced unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

from recon.io.slices import Volume

logger = logging.getLogger(__name__)

#: linear attenuation of water at about 70 keV, per cm, and its value in the CT prior's units (0.4)
WATER_PER_CM = 0.19
_WATER_UNITS = 0.4
#: simulation settings and the modalities they apply to
_APPLIES = {"n_angles": ("ct",), "dose": ("ct",), "acceleration": ("mri",), "center_fraction": ("mri",),
            "mask_pattern": ("mri",), "factor": ("sr",)}
_CHUNK = 16  # slices per operator call: bounded memory for long series


def check_study_path(path, overwrite: bool) -> str:
    """Refuse a study path that is not ``.h5``, exists (without ``overwrite``), is a folder, or cannot be written."""
    from recon.files import check_hdf5_name, check_new_file

    path = os.fspath(path)
    check_hdf5_name(path, "the study")
    check_new_file(path, overwrite)
    return path


def to_unit_range(volume: Volume, modality: str) -> tuple:
    """``(images, (low, high), how)``: slices in the priors' range and the source values at 0 and 1."""
    data = volume.data
    if modality == "ct" and (volume.units == "HU" or float(data.min()) < -500):
        from recon.priors.data import ct_attenuation
        from recon.priors.scans import CT_WINDOW_HU

        return ct_attenuation(data), tuple(CT_WINDOW_HU), "Hounsfield units, -1000 HU at 0 and 1500 HU at 1"
    top = float(np.percentile(data, 99.9))  # not the maximum: one hot pixel would make the rest black
    top = top if top > 0 else float(data.max())
    bright = data[data > 0.05 * top] if top > 0 else data
    scale = float(np.percentile(bright, 99.5)) if bright.size else 0.0
    if not scale > 0:
        raise ValueError(f"the images ({', '.join(volume.sources[:3])}) have no positive values to scale")
    images = np.clip(data / scale, 0.0, 1.0).astype(np.float32)
    named = ", ".join(volume.sources[:3]) or "the images"
    negative = float((data < -0.05 * scale).mean())
    if negative > 0.01:
        logger.warning("%s: %.0f %% of the pixels are negative and become 0 in the ground truth (signed or "
                       "z-scored images?); shift them to values >= 0 first to keep them", named, 100 * negative)
    elif float((images > 0.1).mean()) < 0.001:
        logger.warning("%s: fewer than 0.1 %% of the pixels are above a tenth of the scale (%.6g): the ground "
                       "truth is nearly black", named, scale)
    return images, (0.0, scale), \
        f"divided by {scale:.6g} (99.5th percentile of the bright pixels), clipped to [0, 1]"


def _resized(volume: Volume, size: Optional[int]) -> tuple:
    """``(data, affine, column spacing in mm or None)`` of the slices at ``size`` x ``size`` pixels (None: as they are)."""
    spacing = volume.spacing[2] if volume.spacing is not None else None
    if size is None:
        return volume.data, volume.affine, spacing
    from skimage.transform import resize

    height, width = volume.data.shape[1:]
    data = np.stack([resize(s, (size, size), anti_aliasing=True, preserve_range=True) for s in volume.data])
    affine = None
    if volume.affine is not None:  # new voxel i sits at old (i + 1/2) * step - 1/2 along each resized axis
        step_x, step_y = width / size, height / size
        affine = volume.affine @ np.array([[step_x, 0, 0, (step_x - 1) / 2], [0, step_y, 0, (step_y - 1) / 2],
                                           [0, 0, 1, 0], [0, 0, 0, 1]])
    return data.astype(np.float32), affine, None if spacing is None else spacing * width / size


def simulate_study(images, path, modality: str, *, n_angles: Optional[int] = None, noise: Optional[float] = None,
                   dose: Optional[float] = None, acceleration: Optional[float] = None,
                   center_fraction: Optional[float] = None, mask_pattern: Optional[str] = None,
                   factor: Optional[int] = None, size: Optional[int] = None, seed: int = 0,
                   overwrite: bool = False) -> str:
    """Simulate measurements of ``images`` (paths or a :class:`Volume`) and write a native study to ``path``.

    See the module docstring for the intensities, noise and geometry. All settings and the output
    path are checked before the images are read.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "phantom.npy"), np.pad(np.ones((16, 16)), 8))
    >>> path = simulate_study([os.path.join(folder, "phantom.npy")], os.path.join(folder, "study.h5"), "ct",
    ...                       n_angles=20)
    >>> import h5py; h5py.File(path)["measurement"].shape
    (1, 20, 46)
    """
    from operators._checks import as_positive_float, as_positive_int

    if modality not in ("ct", "mri", "sr"):
        raise ValueError(f"modality must be ct, mri or sr, got {modality!r}")
    given = {"n_angles": n_angles, "dose": dose, "acceleration": acceleration, "center_fraction": center_fraction,
             "mask_pattern": mask_pattern, "factor": factor}
    wrong = [k for k, v in given.items() if v is not None and modality not in _APPLIES[k]]
    if wrong:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} do(es) not apply to {modality}")
    if dose is not None and noise is not None:
        raise ValueError("give --dose (photon noise) or --noise (Gaussian), not both")
    noise = 0.01 if noise is None and dose is None else noise
    if noise is not None and not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"--noise must be a finite number >= 0, got {noise}")
    if dose is not None:
        as_positive_float(dose, "--dose")
    if size is not None:
        as_positive_int(size, "--size")
    _check_geometry(n_angles, acceleration, center_fraction, mask_pattern, factor, size, seed)
    path = check_study_path(path, overwrite)
    if isinstance(images, Volume):
        volume = images
    else:
        from recon.io.volume import read_images

        volume = read_images(images)
    data, affine, pixel_mm = _resized(volume, size)
    truth, window, how = to_unit_range(Volume(data, units=volume.units, sources=volume.sources), modality)
    rng = np.random.default_rng(seed)
    attrs = {"image_size": list(truth.shape[1:]), "intensity_window": list(window), "intensity": how,
             "source": json.dumps([os.path.abspath(s) for s in volume.sources[:1000]]), "seed": seed}
    if affine is not None:  # what `recon export` writes the results with
        attrs["affine"] = np.asarray(affine)
        if volume.space:
            attrs["source_space"] = volume.space
    if volume.units:
        attrs["source_units"] = volume.units
    if volume.modality:
        attrs["source_modality"] = volume.modality
    if volume.dicom:
        attrs["source_dicom"] = json.dumps(volume.dicom)
    datasets = {"ground_truth": truth}
    if modality == "ct":
        datasets["measurement"], extra = _ct(truth, 30 if n_angles is None else n_angles, noise, dose, pixel_mm, seed,
                                             rng)
    elif modality == "mri":
        datasets["measurement"], datasets["mask"], extra = _mri(truth, 4.0 if acceleration is None else acceleration,
                                                                 center_fraction, mask_pattern or "random", noise,
                                                                 seed, rng)
    else:
        datasets["measurement"], extra = _sr(truth, 4 if factor is None else factor, noise, rng)
    attrs.update(extra)
    return _write(path, datasets, attrs, overwrite)


def _check_geometry(n_angles, acceleration, center_fraction, mask_pattern, factor, size, seed) -> None:
    """What the operators would refuse, refused before the images are read: a long series is not read for
    nothing (and ``--factor 0`` is not a ZeroDivisionError)."""
    from operators._checks import as_positive_int
    from operators.masks import PATTERNS
    from operators.sr import FACTORS
    from recon.methods.checks import check_number

    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ValueError(f"--seed must be an integer >= 0 and < 2**63, got {seed!r}")
    if n_angles is not None:
        as_positive_int(n_angles, "--n-angles")
    if acceleration is not None:
        check_number("--acceleration", acceleration, 1.0)
    if center_fraction is not None:
        check_number("--center-fraction", center_fraction, 0.0, low_inclusive=False, high=1.0)
    if mask_pattern is not None and mask_pattern not in PATTERNS:
        raise ValueError(f"--mask-pattern must be one of {', '.join(PATTERNS)}, got {mask_pattern!r}")
    if factor is not None and (isinstance(factor, bool) or factor not in FACTORS):
        raise ValueError(f"--factor must be one of {FACTORS}, got {factor!r}")
    if factor is not None and size is not None and size % factor:
        raise ValueError(f"the images are {size} x {size} (--size), not divisible by the factor {factor}: "
                         f"pass --size with a multiple of {factor}")


def _chunks(truth: np.ndarray, operator):
    import torch

    with torch.no_grad():
        return np.concatenate([operator.A(torch.from_numpy(truth[i:i + _CHUNK])[:, None]).numpy()
                               for i in range(0, len(truth), _CHUNK)])


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))


def _ct(truth, n_angles, noise, dose, pixel_mm, seed, rng):
    import torch

    from operators import LogPoissonNoise, ParallelBeamCT
    from operators.noise import log_poisson_std

    physics = ParallelBeamCT(truth.shape[1:], n_angles=n_angles)
    clean = _chunks(truth, physics)[:, 0]
    extra = {"operator": "parallel_beam_ct", "n_angles": int(n_angles), "n_detectors": int(clean.shape[-1])}
    if dose is None:
        sigma = float(noise) * _rms(clean)
        extra.update(noise_sigma=sigma, description=f"{n_angles}-view parallel-beam CT, Gaussian noise "
                                                    f"{noise:g} x RMS")
        return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32), extra
    pixel_cm = (1.0 if pixel_mm is None else pixel_mm) / 10.0
    scale = WATER_PER_CM / _WATER_UNITS * pixel_cm  # line integrals in these units -> physical (dimensionless)
    model = LogPoissonNoise(I0=dose, rng=torch.Generator().manual_seed(seed))
    physical = torch.from_numpy(clean).double() * scale
    noisy = (model(physical) / scale).numpy().astype(np.float32)
    # the stored sinogram is the physical one divided by scale: LoDoPaB's rule with mu = scale
    sigma = log_poisson_std(torch.from_numpy(clean), dose, mu=scale, min_counts=model.min_counts)
    extra.update(noise_sigma=sigma, dose_I0=float(dose), pixel_size_mm=pixel_cm * 10,
                 description=f"{n_angles}-view parallel-beam CT, {dose:g} photons per bin (Poisson)")
    return noisy, extra


def _mri(truth, acceleration, center_fraction, pattern, noise, seed, rng):
    from operators import CartesianMRI

    center_fraction = 0.08 if center_fraction is None else center_fraction
    physics = CartesianMRI(truth.shape[1:], acceleration=acceleration, center_fraction=center_fraction,
                           pattern=pattern, seed=seed)
    mask = physics.mask.cpu().numpy().astype(np.float32)
    measured = int((mask.reshape(-1, mask.shape[-1]).max(0) > 0).sum())
    achieved = mask.shape[-1] / measured
    if abs(achieved / acceleration - 1) > 0.1:  # the fully sampled centre, or one column at least, sets it
        logger.warning("the mask measures %d of %d columns, %.3gx, not the %gx asked: the fully sampled centre "
                       "(center fraction %g) or the image width decides; the study records both", measured,
                       mask.shape[-1], achieved, acceleration, center_fraction)
    clean = _chunks(truth, physics)  # (N, 2, H, W), zero where not measured
    sigma = float(noise) * _rms(clean[:, :, mask > 0])
    noisy = (clean + sigma * rng.standard_normal(clean.shape) * mask).astype(np.float32)
    extra = {"operator": "cartesian_mri", "noise_sigma": sigma, "acceleration": float(acceleration),
             "acceleration_achieved": achieved,
             "description": f"single-coil Cartesian MRI, {acceleration:g}x {pattern} mask ({measured} of "
                            f"{mask.shape[-1]} columns, {achieved:.3g}x), Gaussian noise {noise:g} x RMS"}
    return (noisy[:, 0] + 1j * noisy[:, 1]).astype(np.complex64), mask, extra


def _sr(truth, factor, noise, rng):
    from operators import SuperResolution

    height, width = truth.shape[1:]
    if height % factor or width % factor:
        raise ValueError(f"the images are {height} x {width}, not divisible by the factor {factor}: "
                         f"pass --size with a multiple of {factor}")
    clean = _chunks(truth, SuperResolution((height, width), factor=factor))[:, 0]
    sigma = float(noise) * _rms(clean)
    extra = {"operator": "super_resolution", "factor": int(factor), "filter": "bicubic", "noise_sigma": sigma,
             "description": f"{factor}x bicubic super-resolution, Gaussian noise {noise:g} x RMS"}
    return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32), extra


def _write(path: str, datasets: dict, attrs: dict, overwrite: bool) -> str:
    """Write the study under a fresh temporary name, then move it to ``path`` (never over a file without ``overwrite``)."""
    import h5py

    from recon.files import fresh_temp, move_into_place

    temp = fresh_temp(path)
    try:
        with h5py.File(temp, "w") as f:
            for name, value in datasets.items():
                f.create_dataset(name, data=value, compression="gzip", shuffle=True,
                                 chunks=(1, *value.shape[1:]) if value.ndim == 3 else None)
            f.attrs.update(attrs)
        move_into_place(temp, path, overwrite, "the study was simulated")
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path
