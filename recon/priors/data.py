"""Training images for the built-in priors, and the held-out images that evaluate them.

Why procedural and installed data: the machines here have no internet, so every training image
comes from code (CT-like phantoms) or from installed packages (nilearn's MNI152 T1 template,
scikit-image's sample images). Each source draws batches from an explicit ``numpy`` generator, so
a training step ``k`` always sees the same batch, which is what makes resume exact.

Held out from training (never sampled by the training sources):

- ``ct``: phantoms from a separate seed stream (``HELD_OUT_SEED``), plus scikit-image's
  Shepp-Logan phantom (the training phantoms are random ellipse scenes, never Shepp-Logan).
- ``mri``: axial slices ``MRI_HELD_OUT_AXIAL`` of the 1 mm MNI152 template; training uses the other
  axial slices (with a 6-slice gap either side) and all coronal and sagittal slices. There is only
  one template brain, so coronal and sagittal training slices do cross the held-out slab.
- ``natural``: scikit-image's ``camera``, ``moon`` and ``coffee`` (grayscale); training uses the
  other sample images in ``NATURAL_TRAINING``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("ct", "mri", "natural")
HELD_OUT_SEED = 0xC7_4E1D
MRI_HELD_OUT_AXIAL = range(84, 92)
MRI_GAP = 6
NATURAL_HELD_OUT = ("camera", "moon", "coffee")
NATURAL_TRAINING = (
    "astronaut", "brick", "cat", "cell", "chelsea", "clock", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "page", "retina", "rocket", "text",
)  # fmt: skip
NATURAL_SCALES = (1, 2, 3, 4, 6, 8)  # downscaling factors of the natural training images
NORMALISATIONS = ("none", "minmax", "percentile", "per-image")


# ----------------------------------------------------------------------------- shared helpers
def _check_zoom(zoom) -> tuple[float, float]:
    """A (low, high) zoom range: the field of view of a training patch is the slice's divided by the zoom."""
    try:
        low, high = (float(z) for z in zoom)
    except (TypeError, ValueError):
        raise ValueError(f"zoom must be two numbers (low, high), got {zoom!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"zoom must satisfy 0 < low <= high, got {zoom!r}")
    return low, high


def _zoom_text(zoom: tuple[float, float]) -> str:
    return f"{zoom[0]:g}-{zoom[1]:g}"


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
        raise ValueError(f"image size must be an integer of at least 8, got {size!r}")
    return int(size)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased bilinear resize of a 2-D image to (size, size), float32."""
    from skimage.transform import resize

    return resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _square(image: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D image to a centred square (brain slices are not square)."""
    h, w = image.shape
    n = max(h, w)
    out = np.zeros((n, n), dtype=np.float32)
    out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = image
    return out


def center_patch(image: np.ndarray, size: int) -> np.ndarray:
    """The central (size, size) patch at native resolution (resized up when the image is smaller)."""
    h, w = image.shape
    if min(h, w) < size:
        return resize_image(_center_crop_square(image), size)
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size], dtype=np.float32)


def _center_crop_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    n = min(h, w)
    return image[(h - n) // 2 : (h - n) // 2 + n, (w - n) // 2 : (w - n) // 2 + n]


def random_affine(images: np.ndarray, rng: np.random.Generator, size: int, max_rotation_deg: float = 10.0,
                  zoom: tuple[float, float] = (0.9, 1.15), flips: bool = True, shift: bool = False) -> np.ndarray:
    """Flip, rotate slightly, zoom (log-uniform in ``zoom``) and resample (N, H, W) to (N, size, size).

    ``shift`` moves a zoomed view anywhere inside the image (crops at several scales) instead of
    keeping it centred. Done with ``torch.nn.functional.grid_sample``: a whole batch is one call.
    """
    import torch
    from torch.nn import functional as F

    n = images.shape[0]
    angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, n))
    scale = 1.0 / np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]), n))
    flip_x = np.where(rng.random(n) < 0.5, -1.0, 1.0) if flips else np.ones(n)
    flip_y = np.where(rng.random(n) < 0.5, -1.0, 1.0) if flips else np.ones(n)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = scale * np.cos(angle) * flip_x
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle) * flip_x
    theta[:, 1, 1] = scale * np.cos(angle) * flip_y
    if shift:  # the view's centre, within the part of the image a view of this zoom can reach
        theta[:, :, 2] = rng.uniform(-1.0, 1.0, (n, 2)) * np.maximum(1.0 - scale, 0.0)[:, None]
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    target = int(np.ceil(2 * size / scale.min()))
    if batch.shape[-1] > target:  # pre-shrink so the bilinear resampling does not alias
        batch = F.interpolate(batch, size=(target, target), mode="area")
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, size, size], align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].numpy()


# ----------------------------------------------------------------------------- CT phantoms
def _ellipse_mask(grid_x, grid_y, cx, cy, a, b, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = (grid_x - cx) * c + (grid_y - cy) * s
    v = -(grid_x - cx) * s + (grid_y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2


def _smooth_field(rng: np.random.Generator, n: int, cutoff: float) -> np.ndarray:
    """Zero-mean, unit-std random texture with spatial frequencies below ``cutoff`` (cycles/pixel)."""
    noise = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    field = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2)), s=(n, n))
    return (field - field.mean()) / (field.std() + 1e-8)


def _draw_phantom(rng: np.random.Generator) -> dict:
    """Random geometry and intensities of one CT-like phantom on the square [-1, 1]^2."""
    body = dict(a=rng.uniform(0.6, 0.95), b=rng.uniform(0.5, 0.9), cx=rng.uniform(-0.08, 0.08),
                cy=rng.uniform(-0.08, 0.08), rot=rng.uniform(-0.3, 0.3))
    body["wobble"] = [(rng.uniform(-0.04, 0.04), rng.uniform(0, 2 * np.pi)) for _ in range(2, 6)]
    a, b, cx, cy = body["a"], body["b"], body["cx"], body["cy"]
    soft = rng.uniform(0.25, 0.45)
    rim = (rng.uniform(0.04, 0.12), soft * rng.uniform(0.6, 0.85)) if rng.random() < 0.7 else None
    lungs = []
    if rng.random() < 0.5:
        for side in (-1, 1):
            lungs.append(((cx + side * a * rng.uniform(0.35, 0.5), cy + rng.uniform(-0.1, 0.1),
                           a * rng.uniform(0.2, 0.35), b * rng.uniform(0.4, 0.65), rng.uniform(-0.3, 0.3)),
                          rng.uniform(0.02, 0.1)))
    organs = []
    for _ in range(rng.integers(3, 10)):
        ellipse = (cx + rng.uniform(-0.6, 0.6) * a, cy + rng.uniform(-0.6, 0.6) * b,
                   rng.uniform(0.04, 0.3), rng.uniform(0.04, 0.3), rng.uniform(0, np.pi))
        organs.append((ellipse, "add", rng.uniform(-0.2, 0.3)) if rng.random() < 0.5 else (ellipse, "set", rng.uniform(0.1, 0.6)))
    bones = []
    for _ in range(rng.integers(1, 6)):
        ra, rb = rng.uniform(0.04, 0.18), rng.uniform(0.04, 0.18)
        ellipse = (cx + rng.uniform(-0.75, 0.75) * a, cy + rng.uniform(-0.75, 0.75) * b, ra, rb, rng.uniform(0, np.pi))
        bones.append((ellipse, rng.uniform(0.25, 0.6), rng.uniform(0.75, 1.0), rng.uniform(0.35, 0.6)))
    return dict(body=body, soft=soft, rim=rim, lungs=lungs, organs=organs, bones=bones)


def _render_phantom(phantom: dict, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant image of ``phantom`` at the points (gx, gy), and its body mask."""
    p = phantom["body"]
    radius = _ellipse_mask(gx, gy, p["cx"], p["cy"], p["a"], p["b"], p["rot"])
    theta = np.arctan2(gy - p["cy"], gx - p["cx"])
    wobble = sum(amp * np.cos(k * theta + phase) for k, (amp, phase) in zip(range(2, 6), p["wobble"]))
    body = radius <= (1 + wobble) ** 2
    image = np.zeros(gx.shape)
    image[body] = phantom["soft"]
    if phantom["rim"] is not None:  # fat layer / skin rim just inside the outline
        width, value = phantom["rim"]
        image[body & (radius > (1 + wobble - width) ** 2)] = value
    for ellipse, value in phantom["lungs"]:  # two dark lobes
        image[(_ellipse_mask(gx, gy, *ellipse) <= 1) & body] = value
    for ellipse, mode, value in phantom["organs"]:  # organs of varied contrast
        region = (_ellipse_mask(gx, gy, *ellipse) <= 1) & body
        image[region] = np.clip(image[region] + value, 0.0, None) if mode == "add" else value
    for ellipse, thickness, cortex, marrow in phantom["bones"]:  # bright rim around a dimmer core
        m = _ellipse_mask(gx, gy, *ellipse)
        image[(m <= 1) & body] = cortex
        image[(m <= (1 - thickness) ** 2) & body] = marrow
    return image, body


def _grid(n: int, zoom: float = 1.0, center=(0.0, 0.0)):
    coords = ((np.arange(n) + 0.5) / n * 2 - 1) / zoom
    return np.meshgrid(coords + center[0], coords + center[1])


def ct_phantom(rng: np.random.Generator, size: int, zoom: float = 1.0, center=(0.0, 0.0)) -> np.ndarray:
    """One CT-like slice in [0, 1]: body outline, bone-like rims, organs, lungs, soft texture.

    Drawn at twice the size and averaged down 2x2 so edges are partial-volume smooth, like a scan.
    ``zoom > 1`` renders only a window of the phantom (centred at ``center`` in [-1, 1] units) at that
    magnification, i.e. a ``size`` crop of the phantom drawn at ``zoom * size`` pixels, at the cost of
    a ``size`` image; this teaches the prior the look of larger images.
    """
    n = 2 * size
    phantom = _draw_phantom(rng)
    gx, gy = _grid(n, zoom, center)
    image, body = _render_phantom(phantom, gx, gy)
    # soft texture inside the body; its correlation length is fixed in phantom units
    texture = _smooth_field(rng, n, rng.uniform(0.02, 0.12) / zoom) * rng.uniform(0.0, 0.05)
    image = np.where(body, image + texture, image)
    image = image.reshape(size, 2, size, 2).mean(axis=(1, 3))
    if zoom == 1.0:
        peak = image.max()
    else:  # normalise as the whole phantom would be: its peak from a coarse full view
        peak = _render_phantom(phantom, *_grid(64))[0].max()
    # varied contrast: window width / level and gamma
    gamma = rng.uniform(0.7, 1.4)
    image = np.clip(image, 0.0, None) ** gamma
    image = image / max(peak**gamma, 1e-6) * rng.uniform(0.7, 1.0)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


class CTPhantoms:
    """Endless procedural CT-like phantoms; nothing to load."""

    kind = "ct"
    description = ("procedural CT-like phantoms (body outline, organs, lungs, bone-like rims, texture, varied contrast), "
                   "half whole, half crops at zoom 1-4x")

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        size = _check_size(size)
        images = []
        for _ in range(batch_size):
            # half whole phantoms, half zoomed crops (1-4x), so the prior also fits 128-256 px images
            zoom = 1.0 if rng.random() < 0.5 else float(np.exp(rng.uniform(0.0, np.log(4.0))))
            center = rng.uniform(-0.7, 0.7, 2) * (1 - 1 / zoom)
            images.append(ct_phantom(rng, size, zoom, center))
        return np.stack(images)


# ----------------------------------------------------------------------------- MRI slices
MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


@functools.lru_cache(maxsize=1)
def _mni_volume() -> np.ndarray:
    """The 1 mm MNI152 T1 template nilearn ships, scaled to [0, 1].

    Read with nibabel straight from nilearn's package data: importing ``nilearn.datasets`` costs
    seconds, the file itself a fraction of one. Same array as ``load_mni152_template(resolution=1)``.
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("MRI training and held-out images need nilearn (pip install 'diffrecon[train]')")
    path = Path(spec.origin).parent / "datasets" / "data" / MNI152_FILE
    if path.is_file():
        import nibabel

        volume = np.asarray(nibabel.load(path).get_fdata(), dtype=np.float32)
    else:  # pragma: no cover - a nilearn that moved its data
        from nilearn.datasets import load_mni152_template

        volume = load_mni152_template(resolution=1).get_fdata().astype(np.float32)
    return volume / volume.max()


def _brain_slices(axis: int, indices) -> list[np.ndarray]:
    """Square slices of the template along ``axis`` with enough brain in them, in radiological view."""
    volume = _mni_volume()
    slices = []
    for i in indices:
        image = volume[(slice(None),) * axis + (i,)]  # a view; np.take copies the whole volume per call
        if (image > 0.1).mean() < 0.08:
            continue
        slices.append(_square(np.rot90(image)))
    return slices


def mri_training_indices(shape: tuple[int, int, int]) -> dict[int, list[int]]:
    """Slice indices per axis (0 sagittal, 1 coronal, 2 axial) that training may use."""
    held = MRI_HELD_OUT_AXIAL
    axial = [k for k in range(shape[2]) if not (held.start - MRI_GAP <= k < held.stop + MRI_GAP)]
    return {2: axial, 1: list(range(shape[1])), 0: list(range(shape[0]))}


@functools.lru_cache(maxsize=1)
def _mri_training_pool() -> list[np.ndarray]:
    indices = mri_training_indices(_mni_volume().shape)
    pool = [s for axis in (2, 1, 0) for s in _brain_slices(axis, indices[axis])]
    logger.debug("MRI training pool: %d slices", len(pool))
    return pool


class MRISlices:
    """MNI152 T1 slices in all three orientations, augmented (flips, rotation, zoom, intensity)."""

    kind = "mri"

    def __init__(self, zoom: tuple[float, float] = (0.85, 4.0)):
        self.zoom = _check_zoom(zoom)
        self.description = ("nilearn MNI152 T1 1 mm template: axial (minus a held-out slab), coronal and sagittal slices, "
                            f"augmented with flips, +-10 deg rotations, zoom {_zoom_text(self.zoom)} (log-uniform), "
                            "intensity scale and gamma")

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        size = _check_size(size)
        pool = _mri_training_pool()
        chosen = [pool[i] for i in rng.integers(0, len(pool), batch_size)]
        side = max(s.shape[0] for s in chosen)
        stack = np.stack([np.pad(s, ((side - s.shape[0]) // 2, (side - s.shape[0] + 1) // 2)) for s in chosen])
        images = random_affine(stack, rng, size, zoom=self.zoom)
        gamma = rng.uniform(0.8, 1.25, (batch_size, 1, 1))
        scale = rng.uniform(0.75, 1.0, (batch_size, 1, 1))
        return (np.clip(images, 0.0, 1.0) ** gamma * scale).astype(np.float32)


# ----------------------------------------------------------------------------- natural images
def _skimage_gray(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = rgb2gray(rgba2rgb(image) if image.shape[-1] == 4 else image)
    image = image.astype(np.float32)
    return image / 255.0 if image.max() > 1.0 else image


@functools.lru_cache(maxsize=1)
def _natural_pyramids() -> list[list[np.ndarray]]:
    from skimage.transform import rescale

    pyramids = []
    for name in NATURAL_TRAINING:
        image = _skimage_gray(name)
        pyramids.append([image] + [rescale(image, 1 / f, anti_aliasing=True).astype(np.float32) for f in NATURAL_SCALES[1:]])
    return pyramids


class NaturalPatches:
    """Random grayscale patches of scikit-image's sample images at six scales, flipped and rotated."""

    kind = "natural"
    description = "grayscale patches of scikit-image sample images (" + ", ".join(NATURAL_TRAINING) + ") at scales 1 to 1/8"

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        size = _check_size(size)
        # images smaller than the patch at every scale (microaneurysms is 102 px) sit out
        pyramids = [levels for levels in ([lvl for lvl in pyramid if min(lvl.shape) >= size] for pyramid in _natural_pyramids())
                    if levels]
        if not pyramids:
            raise ValueError(f"no natural training image is {size} px or larger; use a smaller patch size")
        out = np.empty((batch_size, size, size), dtype=np.float32)
        for k in range(batch_size):
            levels = pyramids[rng.integers(len(pyramids))]
            image = levels[rng.integers(len(levels))]
            top, left = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
            patch = np.rot90(image[top : top + size, left : left + size], rng.integers(4))
            out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return out


# ----------------------------------------------------------------------------- real scans
def _pad_square(images: list[np.ndarray]) -> np.ndarray:
    """Centre (H, W) images on one zero square, so a batch goes through one affine resampling."""
    side = max(max(im.shape) for im in images)
    out = np.zeros((len(images), side, side), dtype=np.float32)
    for k, im in enumerate(images):
        h, w = im.shape
        out[k, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = im
    return out


def _scan_training_slices(volume, split, min_foreground: float) -> list[np.ndarray]:
    """Axial slices of each training block of ``volume``, and coronal and sagittal reformats of the
    blocks at least ``2 * GAP`` slices thick (every fourth one: neighbours are near copies, and a
    reformat of a thin block is mostly its edges).

    ``volume.data`` must already be in [0, 1] with 0 the background; slices with less than
    ``min_foreground`` of their pixels above 0.1 are dropped.
    """
    from recon.priors import scans

    data, pool = volume.data, []
    for block in split.training_blocks(data.shape[0]):
        pool += list(data[block])
        if len(block) >= 2 * scans.GAP:
            for axis in (1, 2):
                pool += list(scans.reformat(data[block], volume.spacing, axis)[::4])
    return [np.ascontiguousarray(s) for s in pool if (s > 0.1).mean() >= min_foreground]


def ct_attenuation(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units as attenuation relative to ``CT_WINDOW_HU``: air 0, water 0.4, 1500 HU at 1."""
    from recon.priors.scans import CT_WINDOW_HU

    low, high = CT_WINDOW_HU
    return np.clip((hu - low) / (high - low), 0.0, None).astype(np.float32)


def _mr_unit(volume: np.ndarray) -> np.ndarray:
    """An MR volume scaled so its 99.5th percentile of the head is 1, clipped to [0, 1]."""
    scale = np.percentile(volume[volume > 0.05 * volume.max()], 99.5)
    return np.clip(volume / scale, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _real_ct_pool() -> list[np.ndarray]:
    from recon.priors import scans

    volume = scans.head_ct()
    return _scan_training_slices(scans.Volume(ct_attenuation(volume.data), volume.spacing), scans.CT_SPLIT, 0.05)


@functools.lru_cache(maxsize=1)
def _real_mr_pool() -> list[np.ndarray]:
    from recon.priors import scans

    volume = scans.colin_t1()
    return _scan_training_slices(scans.Volume(_mr_unit(volume.data), volume.spacing), scans.MR_SPLIT, 0.05)


def scanner_variation(images: np.ndarray, rng: np.random.Generator, curve: bool) -> np.ndarray:
    """What differs between scanners and protocols, on images in [0, 1]: contrast (gamma, scale and,
    with ``curve``, a random monotone curve), blur or a lower resolution, and noise."""
    from scipy.ndimage import gaussian_filter, zoom

    n, size = images.shape[0], images.shape[-1]
    out = np.clip(images, 0.0, 1.0) ** rng.uniform(0.75, 1.3, (n, 1, 1))
    for k in range(n):
        if curve and rng.random() < 0.3:  # piecewise-linear monotone contrast curve through (0, 0) and (1, 1)
            knots = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, 2)), [1.0]])
            out[k] = np.interp(out[k], [0.0, 1 / 3, 2 / 3, 1.0], knots)
        blur = rng.random()
        if blur < 0.2:
            out[k] = gaussian_filter(out[k], rng.uniform(0.3, 1.0))
        elif blur < 0.35:  # acquired at a lower resolution, shown at this one
            low = zoom(out[k], 1 / rng.uniform(1.25, 2.0), order=1)
            out[k] = zoom(low, (size / low.shape[0], size / low.shape[1]), order=1)[:size, :size]
        if rng.random() < 0.3:
            out[k] = out[k] + rng.uniform(0.0, 0.015) * rng.standard_normal((size, size))
    return (np.clip(out, 0.0, 1.0) * rng.uniform(0.8, 1.0, (n, 1, 1))).astype(np.float32)


def _anatomy_views(stack: np.ndarray, rng: np.random.Generator, size: int, zoom: tuple[float, float]) -> np.ndarray:
    """``random_affine`` views of ``stack`` that show anatomy: twice as many views are drawn and the
    first ones with at least 25 % of their pixels above 0.05 are kept (then the fullest others)."""
    n = stack.shape[0]
    views = random_affine(np.concatenate([stack, stack]), rng, size, zoom=zoom, shift=True)
    filled = (views > 0.05).mean(axis=(1, 2))
    full, sparse = np.flatnonzero(filled >= 0.25), np.flatnonzero(filled < 0.25)
    order = np.concatenate([full, sparse[np.argsort(-filled[sparse], kind="stable")]])
    return views[order[:n]]


class RealScanSlices:
    """Training slices of a real scan (outside its held-out slices), augmented as scanners differ.

    Flips, +-10 deg rotations, crops at ``zoom`` anywhere in the slice, an optional window whose top
    is drawn per image (``window_top``, in the pool's units), then :func:`scanner_variation`.
    """

    def __init__(self, kind: str, pool, zoom: tuple[float, float], window_top=None, curve: bool = False,
                 description: str = ""):
        self.kind, self.pool, self.zoom, self.window_top, self.curve = kind, pool, _check_zoom(zoom), window_top, curve
        self.description = description.format(zoom=_zoom_text(self.zoom))

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        size = _check_size(size)
        pool = self.pool()
        stack = _pad_square([pool[i] for i in rng.integers(0, len(pool), batch_size)])
        images = _anatomy_views(stack, rng, size, zoom=self.zoom)
        if self.window_top is not None:
            images = images / rng.uniform(*self.window_top, (batch_size, 1, 1))
        return scanner_variation(images, rng, curve=self.curve)


def real_head_ct(zoom: tuple[float, float] = (0.9, 4.0)) -> RealScanSlices:
    """The head CT as attenuation, air at 0 and the window's top at 750 to 3000 HU: the units a
    reconstruction produces, whatever window the user's scanner applied."""
    return RealScanSlices("ct-real", _real_ct_pool, zoom=zoom, window_top=(0.7, 1.6), description=(
        "InVesalius head CT (invesalius-examples), axial slices and reformats outside the held-out slab, "
        "HU windows with air at 0, flips, rotations, crops at zoom {zoom}, contrast, blur, resolution, noise"))


def real_head_mr(zoom: tuple[float, float] = (0.85, 4.0)) -> RealScanSlices:
    """Colin27's T1 head in three orientations, scaled by its 99.5th percentile, with contrast curves."""
    return RealScanSlices("mri-real", _real_mr_pool, zoom=zoom, curve=True, description=(
        "Colin27 T1 head at 1 mm (mricron-data), axial slices and reformats outside the held-out slab, "
        "flips, rotations, crops at zoom {zoom}, contrast curves, blur, resolution, noise"))


class Mixture:
    """Draws each image of a batch from one of several sources with fixed probabilities."""

    def __init__(self, kind: str, parts: list[tuple[float, object]]):
        self.kind = kind
        self.parts = parts
        weights = np.array([w for w, _ in parts], dtype=float)
        self.weights = weights / weights.sum()
        self.description = " + ".join(f"{w:.0%} {source.description}" for w, (_, source) in zip(self.weights, parts))

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        counts = rng.multinomial(batch_size, self.weights)
        images = np.concatenate([source.sample(rng, int(c), size) for c, (_, source) in zip(counts, self.parts) if c])
        return images[rng.permutation(batch_size)]


# ----------------------------------------------------------------------------- user HDF5 data
class HDF5Images:
    """Random patches of a user's image stack in an HDF5 dataset, (N, H, W) or (N, 1, H, W).

    Normalisation: ``none`` (values must already lie in [0, 1]), ``minmax`` (dataset min/max),
    ``percentile`` (dataset 0.5th/99.5th percentiles, clipped) or ``per-image`` (each image's min/max).
    """

    kind = "hdf5"

    def __init__(self, path, key: str, normalise: str = "minmax"):
        import h5py

        self.path, self.key = Path(path), key
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 training file {self.path} does not exist")
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} is not a readable HDF5 file: {error}") from error
        with handle:
            if key not in handle:
                raise ValueError(f"{self.path} has no dataset {key!r}; it holds {sorted(handle.keys())}")
            dataset = handle[key]
            if not hasattr(dataset, "dtype"):
                raise ValueError(f"{self.path}:{key} is a group, not an image dataset")
            if dataset.dtype.kind not in "fiub":
                raise ValueError(f"{self.path}:{key} has dtype {dataset.dtype}, expected real numbers (images)")
            shape = dataset.shape
            if len(shape) == 4 and shape[1] == 1:
                data = dataset[:, 0]
            elif len(shape) in (2, 3):
                data = dataset[()] if len(shape) == 3 else dataset[()][None]
            else:
                raise ValueError(f"{self.path}:{key} has shape {shape}; expected images (N, H, W), (N, 1, H, W) or (H, W)")
        data = np.asarray(data, dtype=np.float32)
        if data.shape[0] == 0:
            raise ValueError(f"{self.path}:{key} has shape {shape}: no images")
        if min(data.shape[1:]) < 8:
            raise ValueError(f"{self.path}:{key} has images of {data.shape[1:]} pixels; expected at least 8x8 images")
        if not np.isfinite(data).all():
            raise ValueError(f"{self.path}:{key} contains NaN or Inf values")
        self.images = self._normalise(data, normalise)
        if data.min() == data.max():
            raise ValueError(f"{self.path}:{key} holds {data.shape[0]} image(s) of the one value {data.min():g}: "
                             "nothing to learn a prior from")
        # what a resume checks it continues on: the file's name and shape alone let another scan's images in
        self.checksum = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        self.description = f"HDF5 {self.path.name}:{key} ({data.shape[0]} images {data.shape[1]}x{data.shape[2]}, normalise={normalise})"

    def _normalise(self, data: np.ndarray, normalise: str) -> np.ndarray:
        if normalise == "none":
            if data.min() < -1e-3 or data.max() > 1 + 1e-3:
                raise ValueError(f"{self.path}:{self.key}: values span [{data.min():.3g}, {data.max():.3g}] but normalise='none' "
                                 "needs images in [0, 1]; use normalise='minmax' or 'percentile'")
            return np.clip(data, 0, 1)
        if normalise == "per-image":
            low = data.min(axis=(1, 2), keepdims=True)
            high = data.max(axis=(1, 2), keepdims=True)
        elif normalise == "minmax":
            low, high = data.min(), data.max()
        else:
            low, high = np.percentile(data, [0.5, 99.5])
            if not high > low:  # mostly one value (a sparse image): every other pixel would clip to 0 or 1
                raise ValueError(f"{self.path}:{self.key}: the 0.5th and 99.5th percentiles are both {low:g} (more "
                                 "than 99 % of the pixels hold one value), so normalise='percentile' would make "
                                 "the images binary; use normalise='minmax' or 'per-image'")
        return np.clip((data - low) / np.maximum(high - low, 1e-8), 0, 1).astype(np.float32)

    def sample(self, rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
        size = _check_size(size)
        n, h, w = self.images.shape
        if min(h, w) < size:  # upscaled (and a non-square image squashed), the prior would learn another scale
            fits = min(h, w) // 8 * 8
            hint = (" (a volume stored as (H, W, N)? store its slices first, (N, H, W))"
                    if min(h, w) < max(h, w) / 4 else "")
            raise ValueError(f"{self.path}:{self.key} holds images of {h}x{w} pixels, smaller than the {size} px "
                             f"training patch{hint}; pass a patch size of at most {fits} (--size {fits})")
        out = np.empty((batch_size, size, size), dtype=np.float32)
        for k in range(batch_size):
            image = self.images[rng.integers(n)]
            top, left = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
            patch = image[top : top + size, left : left + size]
            out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return out


#: the built-in sources whose views are crops of a scan, so their zoom range can be chosen per run
ZOOMABLE = ("mri", "ct-real", "mri-real")


def training_source(kind: str, zoom=None):
    """The built-in training source for ``kind``: "ct", "mri", "natural", or the real-scan mixes
    "ct-real" and "mri-real" (the Debian packages of :mod:`recon.priors.scans` must be installed).

    ``zoom`` (low, high) replaces the default zoom range of the scan views (``ZOOMABLE`` kinds). With
    larger patches, a proportionally smaller zoom keeps the anatomy at the pixel scales a reconstruction
    grid shows it (a 128 px patch at zoom 0.6-3.5 sees a slice at 77-448 px, a 64 px patch at
    0.85-4 at 54-256 px).
    """
    scan_zoom = {} if zoom is None else {"zoom": _check_zoom(zoom)}
    sources = {
        "ct": CTPhantoms,
        "mri": lambda: MRISlices(**scan_zoom),
        "natural": NaturalPatches,
        "ct-real": lambda: Mixture("ct-real", [(0.75, real_head_ct(**scan_zoom)), (0.25, CTPhantoms())]),
        "mri-real": lambda: Mixture("mri-real", [(0.75, real_head_mr(**scan_zoom)), (0.25, MRISlices(**scan_zoom))]),
    }
    if kind not in sources:
        hint = (f"; to train on the images in the file {kind}, pass it as an HDF5 file (`recon train --hdf5 "
                f"{kind}`, or train(hdf5=...))" if os.path.isfile(kind) else "")
        raise ValueError(f"unknown training data {kind!r}; expected one of {sorted(sources)}{hint}")
    if zoom is not None and kind not in ZOOMABLE:
        raise ValueError(f"training data {kind!r} has no zoom range to set; zoom applies to {list(ZOOMABLE)}")
    return sources[kind]()


# ----------------------------------------------------------------------------- held-out sets
def held_out_images(kind: str, size: int = 64) -> np.ndarray:
    """Images never seen in training, (N, size, size) float32 in [0, 1], the same on every call.

    Examples
    --------
    >>> held_out_images("ct", 64).shape
    (8, 64, 64)
    """
    size = _check_size(size)
    if kind == "ct":
        from skimage.data import shepp_logan_phantom

        rng = np.random.default_rng(HELD_OUT_SEED)
        phantoms = [ct_phantom(rng, size) for _ in range(7)]
        return np.stack([resize_image(shepp_logan_phantom(), size).clip(0, 1)] + phantoms).astype(np.float32)
    if kind == "mri":
        slices = [_square(np.rot90(_mni_volume()[:, :, k])) for k in MRI_HELD_OUT_AXIAL]
        return np.stack([resize_image(s, size) for s in slices]).clip(0, 1).astype(np.float32)
    if kind in ("ct-real", "mri-real"):  # the tuning slices: validation must not peek at the evaluation ones
        return real_images(kind.replace("-real", "-tuning"), size)
    if kind == "natural":
        return np.stack([resize_image(_center_crop_square(_skimage_gray(n)), size) for n in NATURAL_HELD_OUT]).clip(0, 1)
    raise ValueError(f"unknown held-out set {kind!r}; expected one of {KINDS}")


REAL_SETS = ("ct-head", "ct-tuning", "ct-tuning-slab", "mri-head", "mri-tuning", "mri-tuning-slab", "mri-other-subject",
             "mri-abdomen")


def _split_indices(split, name: str) -> tuple[int, ...]:
    """The slices of a ``*-head``, ``*-tuning`` or ``*-tuning-slab`` set in ``split``."""
    if name.endswith("-tuning-slab"):
        return split.tuning_slab()
    return split.tuning if name.endswith("-tuning") else split.evaluation


def real_images(name: str, size: int = 128) -> np.ndarray:
    """Real slices training never sees, (N, size, size) float32 in [0, 1], the same on every call.

    ``ct-head`` / ``ct-tuning``: the evaluation and tuning slices of the head CT, HU window
    ``CT_WINDOW_HU``; ``mri-head`` / ``mri-tuning``: those of Colin27's T1; ``ct-tuning-slab`` /
    ``mri-tuning-slab``: 8 slices over the tuning slice and its gaps (``Split.tuning_slab``), for
    constants fitted on more than one slice; ``mri-other-subject``:
    four coronal slices of ITK's T1 of another subject; ``mri-abdomen``: ITK's abdominal MR slice.
    See :mod:`recon.priors.scans` for the files and the splits.
    """
    from recon.priors import scans

    size = _check_size(size)
    if name in ("ct-head", "ct-tuning", "ct-tuning-slab"):
        volume = scans.head_ct()
        indices = _split_indices(scans.CT_SPLIT, name)
        slices = [np.clip(ct_attenuation(volume.data[k]), 0, 1) for k in indices]
    elif name in ("mri-head", "mri-tuning", "mri-tuning-slab"):
        volume = _mr_unit(scans.colin_t1().data)
        indices = _split_indices(scans.MR_SPLIT, name)
        slices = [_square(volume[k]) for k in indices]
    elif name == "mri-other-subject":
        other = scans.other_t1()  # coronal slices are its acquired plane
        picks = (np.linspace(0.35, 0.65, 4) * other.data.shape[1]).astype(int)
        slices = [_square(c) for c in scans.reformat(_mr_unit(other.data)[:, picks, :], other.spacing, 1)]
    elif name == "mri-abdomen":
        image = scans.abdomen_mr()
        slices = [image / np.percentile(image, 99.5)]
    else:
        raise ValueError(f"unknown real image set {name!r}; expected one of {REAL_SETS}")
    return np.stack([resize_image(s, size) for s in slices]).clip(0, 1).astype(np.float32)
