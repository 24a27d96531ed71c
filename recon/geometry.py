"""One frozen description per operator kind: the operator's geometry as plain values.

A description builds its operator (:meth:`build`), pickles (to a Dask worker), and turns into plain
JSON-able values (:meth:`to_dict`, stored in a Result's metadata as ``operator_description``) from
which :func:`describe` makes the same description again, so the geometry can be rebuilt.
``recon reconstruct`` (``recon.io.measurement``), ``recon batch`` (``recon.batch.physics``) and the
viewer (``recon.viewer.jobs``) build their operators through these. A value left ``None`` takes the
operator's own default. The kinds and their names are :mod:`recon.operator_kinds`'.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import numpy as np


@dataclass(frozen=True)
class _Description:
    kind: ClassVar[str]

    def _given(self, *names) -> dict:
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        """``{"kind": ..., field: value}``: plain JSON-able values (a mask packed to bits, in base64)."""
        values = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "mask" and value is not None:
                value = _pack_mask(value)
            elif f.name == "sensitivity_maps":
                continue  # per-slice data of ``recon batch``, not geometry: never written
            elif isinstance(value, tuple):
                value = list(value)
            values[f.name] = value
        return values


@dataclass(frozen=True)
class ParallelBeamCT(_Description):
    """Parallel-beam CT: ``angles`` (radians) or ``n_angles`` evenly over [0, pi)."""

    kind: ClassVar[str] = "parallel_beam_ct"
    image_size: tuple
    n_angles: Optional[int] = None
    angles: Optional[tuple] = None
    n_detectors: Optional[int] = None
    detector_spacing: Optional[float] = None
    pixel_size: Optional[float] = None
    channels: int = 1

    def _ct_options(self) -> dict:
        options = self._given("n_detectors", "detector_spacing", "pixel_size")
        if self.angles is not None:
            options["angles"] = np.asarray(self.angles, dtype=np.float64)
        else:
            options["n_angles"] = self.n_angles
        return {**options, "channels": self.channels}

    def build(self):
        from operators import ParallelBeamCT as Operator

        return Operator(self.image_size, **self._ct_options())


@dataclass(frozen=True)
class FanBeamCT(ParallelBeamCT):
    """Fan-beam CT: as parallel beam, ``n_angles`` over [0, 2 pi), plus the scanner's distances in pixels."""

    kind: ClassVar[str] = "fan_beam_ct"
    source_distance: Optional[float] = None
    detector_distance: Optional[float] = None

    def build(self):
        from operators import FanBeamCT as Operator

        return Operator(self.image_size, **self._given("source_distance", "detector_distance"), **self._ct_options())


@dataclass(frozen=True, eq=False)
class CartesianMRI(_Description):
    """Cartesian MRI: a ``mask`` (H, W) or (W,), or one generated from ``acceleration``, ``center_fraction``,
    ``pattern`` and ``mask_seed``; ``sensitivity_maps`` (coils, H, W) for multi-coil data."""

    kind: ClassVar[str] = "cartesian_mri"
    image_size: tuple
    acceleration: Optional[float] = None
    center_fraction: Optional[float] = None
    pattern: Optional[str] = None
    mask_seed: Optional[int] = None
    mask: Optional[np.ndarray] = None
    complex_images: bool = False
    sensitivity_maps: Optional[np.ndarray] = None

    def build(self):
        from operators import CartesianMRI as Operator

        options = {"complex_images": bool(self.complex_images)}
        if self.mask is not None:
            options["mask"] = np.asarray(self.mask, dtype=np.float32)
        else:
            options.update(self._given("acceleration", "center_fraction", "pattern"))
            if self.mask_seed is not None:
                options["seed"] = self.mask_seed
        if self.sensitivity_maps is not None:
            options["coil_maps"] = np.asarray(self.sensitivity_maps, dtype=np.complex64)
        return Operator(self.image_size, **options)


@dataclass(frozen=True)
class SuperResolution(_Description):
    """Super-resolution by ``factor`` with the downsampling ``filter``."""

    kind: ClassVar[str] = "super_resolution"
    image_size: tuple
    factor: int = 4
    filter: Optional[str] = None
    channels: int = 1

    def build(self):
        from operators import SuperResolution as Operator

        return Operator(self.image_size, factor=self.factor, **self._given("filter"), channels=self.channels)


#: The description of each operator kind.
DESCRIPTIONS: Mapping[str, type] = {cls.kind: cls for cls in (ParallelBeamCT, FanBeamCT, CartesianMRI, SuperResolution)}


def describe(values: Mapping[str, Any]):
    """The description that ``values`` (``{"kind": ..., ...}``: a batch spec or :meth:`to_dict`'s output) give.

    Keys that are not the kind's geometry (a batch spec's ``noise_sigma``, ``coils``) are left out.
    """
    kind = values.get("kind")
    if kind not in DESCRIPTIONS:
        raise ValueError(f"unknown operator kind {kind!r}; expected one of {', '.join(DESCRIPTIONS)}")
    cls = DESCRIPTIONS[kind]
    given = {f.name: values[f.name] for f in dataclasses.fields(cls) if values.get(f.name) is not None}
    if not isinstance(given["image_size"], (int, np.integer)):
        given["image_size"] = tuple(int(s) for s in np.asarray(given["image_size"]).reshape(-1))
    if "angles" in given:
        given["angles"] = tuple(float(a) for a in np.asarray(given["angles"], dtype=np.float64).reshape(-1))
    if isinstance(given.get("mask"), Mapping):
        given["mask"] = _unpack_mask(given["mask"])
    return cls(**given)


def describe_operator(physics) -> Optional[_Description]:
    """The description of one of this package's operators (``None`` for a foreign physics): what a
    Result's metadata stores so the geometry can be rebuilt. MRI keeps its mask, not its coil maps."""
    import operators

    size = tuple(int(s) for s in physics.img_shape[1:]) if hasattr(physics, "img_shape") else None
    channels = int(physics.img_shape[0]) if size else 1
    if isinstance(physics, (operators.ParallelBeamCT, operators.FanBeamCT)):
        common = dict(image_size=size, angles=tuple(float(a) for a in np.asarray(physics.angles).reshape(-1)),
                      n_detectors=int(physics.n_detectors), detector_spacing=float(physics.detector_spacing),
                      pixel_size=float(physics.pixel_size), channels=channels)
        if isinstance(physics, operators.FanBeamCT):
            return FanBeamCT(**common, source_distance=float(physics.source_distance),
                             detector_distance=float(physics.detector_distance))
        return ParallelBeamCT(**common)
    if isinstance(physics, operators.CartesianMRI):
        return CartesianMRI(image_size=size, mask=physics.mask.detach().cpu().numpy(),
                            complex_images=bool(physics.complex_images))
    if isinstance(physics, operators.SuperResolution):
        return SuperResolution(image_size=size, factor=int(physics.factor), filter=physics.filter_name, channels=channels)
    return None


def _pack_mask(mask) -> dict:
    mask = np.asarray(mask)
    bits = np.packbits((mask != 0).reshape(-1))
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def _unpack_mask(packed: Mapping) -> np.ndarray:
    shape = tuple(int(s) for s in packed["shape"])
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(np.float32)
