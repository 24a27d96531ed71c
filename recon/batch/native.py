"""The package's own input layout: measurements stacked on axis 0, the operator in attributes.

Layout (all names at the file's root)::

    /measurement    slices on axis 0:
                    CT   float (N, n_angles, n_detectors) or (N, C, n_angles, n_detectors)
                    MRI  complex (N, H, W) single-coil, complex (N, coils, H, W) multi-coil,
                         or deepinv's real form float (N, 2, H, W) / (N, 2, coils, H, W)
                    SR   float (N, h, w) or (N, C, h, w)
    /ground_truth   optional, float (N, H, W) or (N, C, H, W): scored with PSNR/SSIM
    /mask           MRI, optional: (H, W) or (W,) sampling mask (else attrs below)
    /sensitivity_maps  MRI multi-coil, optional: complex (coils, H, W) or (N, coils, H, W);
                    estimated from the k-space centre when absent
    /angles         CT, optional: projection angles in radians (else n_angles equispaced in [0, pi))
    attrs:
      operator      "parallel_beam_ct" | "fan_beam_ct" | "cartesian_mri" | "super_resolution"
      image_size    [H, W] of the reconstructed image
      noise_sigma   std of the Gaussian noise on the measurement, in measurement units (default 0)
      fan beam      source_distance, detector_distance (in pixels)
      MRI           acceleration, center_fraction, mask_pattern, mask_seed (if no /mask);
                    complex_images (bool, default false: real images; true: complex, magnitude saved)
      SR            factor, filter

Settings (``--operator``, ``--n-angles``, ``--acceleration``, ...) fill in attributes a file lacks;
a setting that contradicts a file's attribute is an error (the file describes its own data), except
``noise_sigma`` and ``mask_pattern``, which override the file's value when given (the file's value
is then only the default).
"""

from __future__ import annotations

import logging

import numpy as np

from operators._checks import as_image_size, as_positive_int
from recon.batch.layouts import InputFile, PostProcessing, SliceInput, open_h5, require_dataset, to_real_channels
from recon.batch.physics import check_spec
from recon.batch.settings import GEOMETRY_KEYS
from recon.io.slices import places_voxels, voxel_spacing
from recon.methods.checks import check_number
from recon.operator_kinds import modality_of

logger = logging.getLogger(__name__)

# attribute -> setting that may fill it in
_FILLABLE = {
    "operator": "operator",
    "n_angles": "n_angles",
    "n_detectors": "n_detectors",
    "source_distance": "source_distance",
    "detector_distance": "detector_distance",
    "acceleration": "acceleration",
    "center_fraction": "center_fraction",
    "mask_pattern": "mask_pattern",
    "factor": "factor",
}
_OVERRIDES = ("mask_pattern",)  # settings that, when given, win over the file's attribute
# fillable settings each operator reads; CT's n_angles and n_detectors are only checked against
# the measurement's shape, so they never change a number
_READ_BY = {
    "parallel_beam_ct": ("operator",),
    "fan_beam_ct": ("operator", "source_distance", "detector_distance"),
    "cartesian_mri": ("operator", "acceleration", "center_fraction", "mask_pattern"),
    "super_resolution": ("operator", "factor"),
}


def _plain(value):
    """HDF5 attribute -> plain Python value (str, float, int, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


#: Datasets that describe one kind of operator's acquisition: in a file of another kind they are refused,
#: not ignored.
OPERATOR_DATASETS = {"mask": ("cartesian_mri",), "sensitivity_maps": ("cartesian_mri",),
                     "angles": ("parallel_beam_ct", "fan_beam_ct")}


class NativeFile(InputFile):
    """A file in the package's own layout (see the module docstring)."""

    layout = "native"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        with open_h5(self.path) as f:
            measurement = require_dataset(f, "measurement", self.path, ndim=(3, 4, 5))
            self.attrs = {key: _plain(value) for key, value in f.attrs.items()}
            self._fill_from_settings()
            kind = self.attrs.get("operator")
            if kind is None:
                raise ValueError(f"input {self.path!r} has no 'operator' attribute; set it in the file or pass "
                                 "--operator (parallel_beam_ct, fan_beam_ct, cartesian_mri, super_resolution)")
            if "image_size" not in self.attrs:
                raise ValueError(f"input {self.path!r} has no 'image_size' attribute ([H, W] of the image)")
            self.kind = kind
            self.n_slices = measurement.shape[0]
            self.measurement_shape = measurement.shape[1:]
            self.is_complex = np.issubdtype(measurement.dtype, np.complexfloating)
            foreign = [name for name, kinds in OPERATOR_DATASETS.items() if name in f and kind not in kinds]
            if foreign:  # a kind set wrong (or data of another scan) would be reconstructed without them
                raise ValueError(f"input {self.path!r} holds {', '.join(repr(n) for n in foreign)}, which the "
                                 f"operator {kind!r} does not use (" + "; ".join(
                                     f"{n}: {', '.join(OPERATOR_DATASETS[n])}" for n in foreign)
                                 + "); check the 'operator' attribute or remove them")
            if self.is_complex and kind != "cartesian_mri":
                raise ValueError(f"input {self.path!r}: 'measurement' is complex ({measurement.dtype}) but the "
                                 f"operator {kind!r} measures real values; store real data")
            self.has_ground_truth = "ground_truth" in f
            self.truth_shape = require_dataset(f, "ground_truth", self.path, ndim=(3, 4), kinds="iuf").shape \
                if self.has_ground_truth else None
            if self.has_ground_truth and self.truth_shape[0] != self.n_slices:
                raise ValueError(f"input {self.path!r}: 'ground_truth' has {self.truth_shape[0]} slices, "
                                 f"'measurement' has {self.n_slices}")
            self.angles = (np.asarray(require_dataset(f, "angles", self.path, ndim=(1,), kinds="iuf")[()],
                                      dtype=np.float64).tolist() if "angles" in f else None)
            self.mask = (np.asarray(require_dataset(f, "mask", self.path, ndim=(1, 2), kinds="biuf")[()],
                                    dtype=np.float32) if "mask" in f else None)
            self.maps_per_slice = None
            if "sensitivity_maps" in f:
                maps = require_dataset(f, "sensitivity_maps", self.path, ndim=(3, 4))
                self.maps_per_slice = maps.ndim == 4
                self.maps_shape = maps.shape
                self.maps = None if self.maps_per_slice else np.asarray(maps[()], dtype=np.complex64)
        self.modality = modality_of(kind)
        self.physics = self._physics_spec()
        check_spec(self.physics)  # a bad geometry fails here, for the file, not once per slice
        if self.has_ground_truth and list(self.truth_shape[-2:]) != list(self.physics["image_size"]):
            raise ValueError(f"input {self.path!r}: 'ground_truth' slices are {tuple(self.truth_shape[-2:])}, "
                             f"image_size is {tuple(self.physics['image_size'])}")
        # MRI outputs one channel (real images, or the magnitude of complex ones)
        channels = self.physics.get("channels", 1) if self.kind != "cartesian_mri" else 1
        truth_channels = (self.truth_shape[1] if len(self.truth_shape) == 4 else 1) if self.has_ground_truth else None
        if truth_channels is not None and truth_channels != channels:
            raise ValueError(f"input {self.path!r}: 'ground_truth' {tuple(self.truth_shape)} has "
                             f"{truth_channels} channels, the reconstruction {channels} (from 'measurement' "
                             f"{(self.n_slices, *self.measurement_shape)}): it could not be scored")

    def _fill_from_settings(self) -> None:
        self.filled = set()  # settings that gave the file a value it did not have, or replaced its own
        for attr, key in _FILLABLE.items():
            given = getattr(self.settings, key)
            if given is None:  # not given: the file's own value, if it has one
                continue
            if self.attrs.get(attr) != given:
                self.filled.add(key)
            if attr in self.attrs and self.attrs[attr] != given:
                if key not in _OVERRIDES:
                    raise ValueError(f"input {self.path!r} says {attr}={self.attrs[attr]!r} but the settings give "
                                     f"{key}={given!r}; drop the setting (the file describes its own data)")
                self.overridden[attr] = given
            self.attrs[attr] = given

    def unused_settings(self) -> set:
        """Geometry settings that change nothing for this file: left out of its output's fingerprint.

        Those its operator does not read, those that repeat the file's own attribute, and the mask
        settings where the file stores its mask.
        """
        read = set(_READ_BY.get(self.kind, GEOMETRY_KEYS))
        if self.kind == "cartesian_mri" and self.mask is not None:
            read -= {"acceleration", "center_fraction", "mask_pattern"}
        return {key for key in GEOMETRY_KEYS if key not in read or key not in self.filled}

    def _physics_spec(self) -> dict:
        a, shape = self.attrs, self.measurement_shape
        size = a["image_size"]
        if isinstance(size, list) and len(size) in (1, 3):  # [n]: a square image; [C, H, W]: the image's
            size = size[0] if len(size) == 1 else size[-2:]
        image_size = list(as_image_size(size, "attribute 'image_size'"))
        sigma = self.settings.noise_sigma
        spec = {"kind": self.kind, "image_size": image_size,
                "noise_sigma": check_number("attribute 'noise_sigma'", a.get("noise_sigma", 0.0), 0.0)
                if sigma is None else float(sigma)}
        if self.kind in ("parallel_beam_ct", "fan_beam_ct"):
            if len(shape) not in (2, 3):
                raise ValueError(f"input {self.path!r}: CT 'measurement' should be (N, n_angles, n_detectors) or "
                                 f"(N, C, n_angles, n_detectors), has shape {(self.n_slices, *shape)}")
            n_angles, n_detectors = shape[-2:]
            for name, value, found in (("n_angles", a.get("n_angles"), n_angles),
                                       ("n_detectors", a.get("n_detectors"), n_detectors)):
                if value is not None and as_positive_int(value, f"attribute {name!r}") != found:
                    raise ValueError(f"input {self.path!r}: {name}={value} but 'measurement' has {found} "
                                     f"(shape {(self.n_slices, *shape)})")
            if self.angles is not None and len(self.angles) != n_angles:
                raise ValueError(f"input {self.path!r}: 'angles' has {len(self.angles)} values but 'measurement' "
                                 f"has {n_angles} angles")
            largest = float(np.max(np.abs(self.angles))) if self.angles else 0.0
            if largest > 2 * np.pi + 1e-6:  # degrees read as radians scatter the views over many turns
                raise ValueError(f"input {self.path!r}: 'angles' go up to {largest:g}, more than 2 pi: they are "
                                 "radians; are these degrees? store np.deg2rad of them")
            spec.update(n_angles=int(n_angles), n_detectors=int(n_detectors), angles=self.angles,
                        channels=int(shape[0]) if len(shape) == 3 else 1)
            if self.kind == "fan_beam_ct":
                for name in ("source_distance", "detector_distance"):
                    if a.get(name) is None:
                        raise ValueError(f"input {self.path!r}: fan-beam CT needs the {name!r} attribute "
                                         f"(or --{name.replace('_', '-')})")
                    spec[name] = float(a[name])
        elif self.kind == "cartesian_mri":
            spec.update(self._mri_spec(image_size))
        elif self.kind == "super_resolution":
            if a.get("factor") is None:
                raise ValueError(f"input {self.path!r}: super-resolution needs the 'factor' attribute (or --factor)")
            factor = as_positive_int(a["factor"], "attribute 'factor'")
            spec.update(factor=factor, filter=str(a.get("filter", "bicubic")),
                        channels=int(shape[0]) if len(shape) == 3 else 1)
            expected = [s // factor for s in image_size]
            if list(shape[-2:]) != expected:
                raise ValueError(f"input {self.path!r}: measurement slices are {tuple(shape[-2:])}, expected "
                                 f"{tuple(expected)} (image_size {image_size} / factor {factor})")
        else:
            raise ValueError(f"input {self.path!r}: unknown operator {self.kind!r}")
        return spec

    def _mri_spec(self, image_size) -> dict:
        a, shape = self.attrs, self.measurement_shape
        if self.is_complex:
            coils = shape[0] if len(shape) == 3 else None
            spatial = shape[-2:]
        else:
            if shape[0] != 2 or len(shape) not in (3, 4):
                raise ValueError(f"input {self.path!r}: real MRI 'measurement' should be (N, 2, H, W) or "
                                 f"(N, 2, coils, H, W), has shape {(self.n_slices, *shape)}")
            coils = shape[1] if len(shape) == 4 else None
            spatial = shape[-2:]
        if list(spatial) != list(image_size):
            raise ValueError(f"input {self.path!r}: k-space is {tuple(spatial)}, image_size is {tuple(image_size)}")
        complex_images = a.get("complex_images", False)
        if isinstance(complex_images, str) or complex_images not in (True, False):  # bool("false") is True
            raise ValueError(f"input {self.path!r}: attribute 'complex_images' should be true or false, "
                             f"got {complex_images!r}")
        spec = {"complex_images": bool(complex_images), "coils": coils}
        if self.mask is not None:
            spec["mask"] = self.mask
            unused = {k: getattr(self.settings, k) for k in ("acceleration", "center_fraction", "mask_pattern")
                      if getattr(self.settings, k) is not None}
            if unused:  # the data were measured with the file's mask: another mask cannot apply to them
                logger.warning("input %s has its own /mask, which is used; ignoring %s", self.path, unused)
        elif a.get("acceleration") is not None:
            spec.update(acceleration=float(a["acceleration"]),
                        center_fraction=float(a.get("center_fraction", 0.08)),
                        pattern=str(a.get("mask_pattern", "random")),
                        mask_seed=self._mask_seed(a.get("mask_seed", 0)))
        else:
            raise ValueError(f"input {self.path!r}: MRI needs a 'mask' dataset or the 'acceleration' attribute "
                             "(or --acceleration)")
        if self.maps_per_slice is not None:
            self._check_maps(coils, spatial)
        if coils is not None and self.maps_per_slice is None:
            spec["estimate_maps"] = True
        elif coils is not None and not self.maps_per_slice:
            spec["sensitivity_maps"] = self.maps
        return spec

    def _mask_seed(self, value) -> int:
        """The file's ``mask_seed`` as the whole number it must be: 1.7 or "1" would draw another mask silently."""
        try:
            whole = (not isinstance(value, (bool, np.bool_, str, bytes)) and np.isscalar(value)
                     and bool(np.isfinite(value)) and float(value) == int(value))
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ValueError(f"input {self.path!r}: attribute 'mask_seed' should be a whole number, got {value!r}")
        return int(value)

    def _check_maps(self, coils, spatial) -> None:
        """Coil maps that fit the k-space, checked here: a coil count that differs fails every slice with a
        message about the measurement's shape, and maps of single-coil data would be ignored."""
        shape = tuple(self.maps_shape)
        measurement = (self.n_slices, *self.measurement_shape)
        if coils is None:
            raise ValueError(f"input {self.path!r} has 'sensitivity_maps' {shape} but 'measurement' {measurement} is "
                             "single-coil k-space; coil maps apply to multi-coil k-space (N, coils, H, W)")
        expected = (coils, *spatial) if not self.maps_per_slice else (self.n_slices, coils, *spatial)
        if shape != expected:
            raise ValueError(f"input {self.path!r}: 'sensitivity_maps' has shape {shape}, expected {expected} for "
                             f"'measurement' {measurement} ({coils} coils; (coils, H, W) for the file or "
                             "(N, coils, H, W) per slice)")

    def read(self, index: int, seed: int) -> SliceInput:
        with open_h5(self.path) as f:
            y = f["measurement"][index]
            truth = f["ground_truth"][index] if self.has_ground_truth else None
            physics = dict(self.physics)
            if self.maps_per_slice:
                physics["sensitivity_maps"] = np.asarray(f["sensitivity_maps"][index], dtype=np.complex64)
        if self.kind == "cartesian_mri":
            y = to_real_channels(y) if self.is_complex else np.asarray(y, dtype=np.float32)
            if physics.pop("estimate_maps", False):
                from recon.batch.sensitivity import estimate_sensitivity_maps

                physics["sensitivity_maps"] = estimate_sensitivity_maps(y[0] + 1j * y[1], physics.get("mask"))
        else:
            y = np.asarray(y, dtype=np.float32)
            if y.ndim == 2:
                y = y[None]
        post = PostProcessing(magnitude=self.kind == "cartesian_mri" and bool(physics.get("complex_images", False)))
        if truth is not None:
            truth = np.asarray(truth, dtype=np.float32)
        return SliceInput(self.key, index, y, physics, post, truth, seed)

    def describe(self) -> dict:
        facts = {**super().describe(), "operator": self.kind, "image_size": self.physics["image_size"],
                 "measurement_shape": list(self.measurement_shape), "noise_sigma": self.physics["noise_sigma"]}
        affine = self.attrs.get("affine")  # a `recon simulate` study's
        if affine is not None and places_voxels(affine):  # the viewer's scale: a volume keeps its proportions
            facts["voxel_mm"] = list(voxel_spacing(affine))
        return facts
