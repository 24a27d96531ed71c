"""napari reader for diffrecon result files and batch outputs.

One function turns the arrays of a reconstruction into napari layer data (:func:`result_layers`);
the reader and the dock widget both call it, so a file and a run from the viewer look the same:

- ``<name> mean`` (gray), ``<name> uncertainty (std)`` (magma, additive blending: where it lies
  on the mean, outside grid mode, the mean still shows through), ``<name> initial`` and
  ``<name> samples`` (hidden, the posterior samples as a stack);
- a single channel is dropped, so a 2-D slice is a 2-D layer, a volume or a batch of slices is a
  stack with a slider;
- contrast limits come from robust percentiles of the data, mean, initial and samples share the
  mean's limits so they compare at a glance;
- the layer metadata holds method, prior and PSNR where known, plus the file's full metadata;
- a batch output of a study with a geometry (``recon simulate`` from NIfTI or DICOM) keeps its voxel
  spacing as the layers' ``scale``, so a volume has its proportions in 3-D.

The reader only answers for HDF5 files stamped by this package (``format="diffrecon-result"`` for
single results, or a batch output: see :func:`file_layout`); for anything else it returns ``None`` so
napari asks the next reader. Only numpy and h5py are imported here, so napari starts fast.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from recon.files import HDF5_SUFFIXES
from recon.result import ARRAYS, FORMAT, decode_metadata

logger = logging.getLogger(__name__)

EXTENSIONS = HDF5_SUFFIXES
BATCH_FORMATS = ("diffrecon-batch",)  # markers a batch output may carry instead of FORMAT
ROBUST_PERCENTILES = (0.5, 99.5)
STD_COLORMAP = "magma"
STD_BLENDING = "additive"  # outside grid mode the std lies on the mean: added, it lets the mean show through
PSNR_KEYS = ("psnr", "psnr_db", "PSNR")

LayerData = tuple  # (data, kwargs, layer_type), napari's LayerDataTuple
PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- reader contract
def get_reader(path: Union[PathLike, Sequence[PathLike]]) -> Optional[Callable[[Any], list]]:
    """napari reader hook: return :func:`read` if every path is one of our files, else ``None``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(file_layout(p) for p in paths):
        return None
    return read


def read(path: Union[PathLike, Sequence[PathLike]]) -> list:
    """Read one or more result or batch files into napari layer data tuples."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list = []
    for p in paths:
        layers.extend(read_file(p))
    return layers


def file_layout(path: PathLike) -> Optional[str]:
    """``"result"``, ``"batch"`` or ``None`` (not an HDF5 file of ours, or not readable).

    A file is ours when its root carries ``format="diffrecon-result"`` (written by
    :func:`recon.result.write_attrs`) or one of :data:`BATCH_FORMATS`, and has ``mean`` and ``std``
    datasets. It is a batch output when it says so: a per-slice ``status`` dataset, or ``batch=True``
    or ``kind``/``layout="batch"`` in its attributes or metadata. Shapes alone cannot tell: a batch
    ``(N, C, H, W)`` and a volume ``(C, D, H, W)`` look alike.

    A batch output with no finished slice yet has no ``mean`` or ``std`` (``recon batch`` creates
    them with the first one): it is still ``"batch"``, so that :func:`read_file` can say why there is
    nothing to show instead of napari saying no reader knows the file.
    """
    path = os.fspath(path)
    if not path.lower().endswith(EXTENSIONS) or not os.path.isfile(path):
        return None
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return _layout_of_open_file(f)
    except (OSError, ValueError) as err:  # unreadable, truncated, or not HDF5 at all
        logger.debug("%s is not a diffrecon file: %s", path, err)
        return None


def unreadable(path: PathLike) -> Optional[str]:
    """Why an ``.h5`` file cannot be opened as HDF5 at all (damaged, truncated, not HDF5), else ``None``: what
    ``recon view`` says instead of "not a diffrecon result"."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r"):
            return None
    except (OSError, ValueError) as err:
        return f"{os.fspath(path)} cannot be read as HDF5 (damaged, truncated or not HDF5): {err}"


def _layout_of_open_file(f) -> Optional[str]:
    import h5py

    marker = _as_str(f.attrs.get("format"))
    if marker not in (FORMAT, *BATCH_FORMATS):
        return None
    metadata = _metadata(f)
    batch = marker in BATCH_FORMATS or _says_batch(f, metadata)
    if any(name in f and not isinstance(f[name], h5py.Dataset) for name in ("mean", "std")):
        return None  # a group under our names: not a file we wrote
    if "mean" not in f or "std" not in f:
        return "batch" if batch and "status" in f else None  # a batch output with no slice done yet
    return "batch" if batch else "result"


def _says_batch(f, metadata: dict) -> bool:
    if "status" in f or "slice_status" in f:
        return True
    for source in (metadata, {k: _as_str(v) for k, v in f.attrs.items()}):
        if source.get("kind") == "batch" or source.get("layout") == "batch" or source.get("batch") in (True, "true"):
            return True
    return False


# ----------------------------------------------------------------------------- file -> layers
def read_file(path: PathLike) -> list:
    """Layer data for one file (see the module docstring for what comes out)."""
    import h5py

    path = os.fspath(path)
    layout = file_layout(path)
    if layout is None:
        raise ValueError(f"{path} is not a diffrecon result or batch output")
    with h5py.File(path, "r") as f:
        if "mean" not in f or "std" not in f:
            raise ValueError(_nothing_done_message(path, f))
        metadata = _metadata(f)
        complex_valued = [name for name in ARRAYS if name in f and getattr(f[name], "dtype", None) is not None
                          and f[name].dtype.kind == "c"]
        if complex_valued:  # float32 would keep the real part alone
            raise ValueError(f"{path}: {', '.join(complex_valued)} hold complex values; the viewer shows real "
                             "images (store the magnitude)")
        arrays = {name: (np.asarray(f[name][()], dtype=np.float32) if name in f else None) for name in ARRAYS}
        extras = {name: f[name][()] for name in ("psnr", "ssim", "status", "error") if name in f}
    name = os.path.splitext(os.path.basename(path))[0]
    metadata = dict(metadata)
    for key, value in extras.items():
        metadata.setdefault(key, _decode(value))
    return result_layers(
        name, arrays["mean"], arrays["std"], initial=arrays["initial"], samples=arrays["samples"],
        metadata=metadata, stacked=(layout == "batch"), source=path, voxel=_voxel_mm(metadata),
    )


def _voxel_mm(metadata: dict) -> Optional[tuple]:
    """The slices' ``(slice, row, column)`` spacing in mm a batch output recorded from its study, if any."""
    source = metadata.get("input")
    spacing = source.get("voxel_mm") if isinstance(source, dict) else None
    try:
        spacing = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    return spacing if len(spacing) == 3 and all(np.isfinite(spacing)) and min(spacing) > 0 else None


def nothing_to_show(path: PathLike) -> Optional[str]:
    """Why a file of ours has no layers yet (a batch output with no finished slice), else ``None``.

    ``recon view`` asks before starting napari, so the user gets the reason, not a traceback.
    """
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        if "status" in f and ("mean" not in f or "std" not in f):
            return _nothing_done_message(os.fspath(path), f)
    return None


def _nothing_done_message(path: str, f) -> str:
    """Why a batch output without ``mean``/``std`` has nothing to show: how many slices wait or failed."""
    status = [str(s) for s in _decode(f["status"][()])]
    counts = {state: status.count(state) for state in ("pending", "failed")}
    message = (f"{path}: no slice of this batch output has finished yet ({counts['pending']} pending, "
               f"{counts['failed']} failed of {len(status)}); there is nothing to show until one is done")
    errors = [e for e in (_decode(f["error"][()]) if "error" in f else []) if e]
    if errors:
        message += f". First error: {errors[0]}"
    return message


def result_layers(name: str, mean: np.ndarray, std: np.ndarray, initial: Optional[np.ndarray] = None,
                  samples: Optional[np.ndarray] = None, metadata: Optional[dict] = None, stacked: bool = False,
                  source: Optional[str] = None, include: Sequence[str] = ARRAYS,
                  voxel: Optional[Sequence[float]] = None) -> list:
    """Turn a reconstruction's arrays into napari layer data tuples.

    Parameters
    ----------
    name : str
        Prefix of the layer names.
    mean, std, initial, samples : ndarray
        As in :class:`recon.result.Result`: ``(C, ...)`` and ``(K, C, ...)``; with ``stacked=True``
        one leading slice axis more (a batch output): ``(N, C, ...)`` and ``(N, K, C, ...)``.
    metadata : dict
        The result's metadata; method, prior and PSNR are lifted to the top of each layer's metadata.
    include : sequence of str
        Which of ``mean``, ``std``, ``initial``, ``samples`` to return (the widget adds mean and std).
    voxel : (slice, row, column) spacing in mm, optional
        The layers' ``scale`` (a stack of slices only), so a volume keeps its proportions in 3-D and a
        layer saved as NIfTI its voxel size.

    Returns
    -------
    list of (data, kwargs, "image") tuples, napari's ``LayerDataTuple``.
    """
    metadata = dict(metadata or {})
    lead = 1 if stacked else 0
    mean = _drop_single_channel(np.asarray(mean, dtype=np.float32), lead)
    std = _drop_single_channel(np.asarray(std, dtype=np.float32), lead)
    if initial is not None:
        initial = _drop_single_channel(np.asarray(initial, dtype=np.float32), lead)
    if samples is not None:
        samples = _drop_single_channel(np.asarray(samples, dtype=np.float32), lead + 1)
        if stacked:  # (N, K, ...) -> (K, N, ...): napari lines up trailing axes, so the slices share the mean's slider
            samples = np.moveaxis(samples, 1, 0)
    image_limits = robust_limits(mean)
    summary = layer_summary(metadata, source)
    style = {
        "mean": dict(name=f"{name} mean", colormap="gray", contrast_limits=image_limits),
        "std": dict(name=f"{name} uncertainty (std)", colormap=STD_COLORMAP, blending=STD_BLENDING,
                    contrast_limits=robust_limits(std, floor_at_zero=True)),
        "initial": dict(name=f"{name} initial", colormap="gray", contrast_limits=image_limits, visible=False),
        "samples": dict(name=f"{name} samples", colormap="gray", contrast_limits=image_limits, visible=False),
    }
    data = {"mean": mean, "std": std, "initial": initial, "samples": samples}
    layers = []
    for key in ARRAYS:
        if key not in include or data[key] is None:
            continue
        kwargs = dict(style[key], metadata={**summary, "array": key})
        scale = _layer_scale(voxel, data[key].ndim, key == "samples", stacked)
        if scale is not None:
            kwargs["scale"] = scale
        layers.append((data[key], kwargs, "image"))
    return layers


def _layer_scale(voxel, ndim: int, samples: bool, stacked: bool) -> Optional[tuple]:
    """napari's per-axis ``scale`` for a stack of slices ``(N, H, W)`` (samples: ``(K, N, H, W)``, K unscaled)."""
    if voxel is None or not stacked or ndim != 3 + samples:
        return None
    slab, row, column = voxel
    return (1.0, slab, row, column) if samples else (slab, row, column)


def layer_summary(metadata: dict, source: Optional[str] = None) -> dict:
    """Layer metadata: method, prior and PSNR at the top (where known), the full metadata below."""
    prior = metadata.get("prior_name", metadata.get("prior"))  # recon.reconstruct writes prior_name
    if isinstance(prior, dict):
        prior = prior.get("name", prior)
    settings = metadata.get("settings") if isinstance(metadata.get("settings"), dict) else {}
    summary = {
        "method": metadata.get("method", settings.get("method")),  # batch outputs keep it in their settings
        "prior": prior,
        "psnr": _find_psnr(metadata),
        "source": source,
        "diffrecon": metadata,
    }
    return summary


def _find_psnr(metadata: dict):
    for key in PSNR_KEYS:
        if key in metadata:
            return metadata[key]
    for nested in ("metrics", "quality"):
        if isinstance(metadata.get(nested), dict):
            found = _find_psnr(metadata[nested])
            if found is not None:
                return found
    return None


# ----------------------------------------------------------------------------- array helpers
def robust_limits(data: np.ndarray, floor_at_zero: bool = False) -> tuple:
    """Contrast limits from the 0.5 and 99.5 percentiles of the finite values, never empty."""
    finite = np.asarray(data, dtype=np.float32)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return (0.0, 1.0)
    if finite.size > 1_000_000:  # percentiles of a strided subset are as good and much faster
        finite = finite[:: finite.size // 1_000_000 + 1]
    low, high = (float(v) for v in np.percentile(finite, ROBUST_PERCENTILES))
    if floor_at_zero:
        low = 0.0 if low >= 0 else low
    if not high > low:  # constant image: widen so napari can draw it
        if floor_at_zero and high == 0:  # a zero std (deterministic method): show it as zero
            return (0.0, 1.0)
        span = abs(high) if high != 0 else 1.0
        low, high = low - 0.5 * span, high + 0.5 * span
    return (low, high)


def _drop_single_channel(array: np.ndarray, channel_axis: int) -> np.ndarray:
    if array.ndim > channel_axis + 2 and array.shape[channel_axis] == 1:
        return np.take(array, 0, axis=channel_axis)
    return array


def _metadata(f) -> dict:
    raw = f.attrs.get("metadata")
    if raw is None:
        return {}
    try:
        value = decode_metadata(_as_str(raw))  # tuples come back as tuples, as in load_result
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _as_str(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return value


def _decode(value):
    value = np.asarray(value)
    if value.dtype.kind in "SO":
        return [_as_str(v) for v in value.ravel().tolist()]
    return value.tolist()
