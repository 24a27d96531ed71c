"""``recon export``: a result's mean and std as NIfTI, a DICOM series or TIFF, in the source's units and geometry.

A result from ``recon batch`` on a study written by ``recon simulate`` finds that study through its
metadata (``input.path``) and takes from it the intensity map (back to Hounsfield units, say), the
affine, and for a DICOM source the patient and study, so a viewer lays the result over the original.
``like`` (any image file or DICOM folder :func:`recon.io.read_images` reads) gives the geometry and
identity instead. Without either, voxels are 1 mm and the DICOM series is a Secondary Capture.

Output by name: ``*.nii`` / ``*.nii.gz`` (the mean there, the std beside it as ``*_std`` with the same
suffix), ``*.tif`` / ``*.tiff`` (float32 pages, likewise), anything else a folder with one DICOM series per array
(``OUT/mean``, ``OUT/std``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Sequence

import numpy as np

from recon.files import HDF5_SUFFIXES
from recon.io.slices import NIFTI_SUFFIXES, Volume

logger = logging.getLogger(__name__)

ARRAYS = ("mean", "std")
_TIFF = (".tif", ".tiff")
#: names of files export does not write: as ``--out`` they would become a DICOM folder of that name
_OTHER_FILES = (".npy", ".npz", ".png", ".jpg", ".jpeg", *HDF5_SUFFIXES, ".dcm", ".mat", ".nrrd", ".mha", ".mhd")


def output_paths(out, arrays: Sequence[str]) -> dict:
    """Array name -> where it goes: the mean at ``out``, the std beside it (``_std``), whatever the order
    asked (the names say what each file holds); or DICOM subfolders."""
    out = os.fspath(out)
    if not out.strip():
        raise ValueError("the output name is empty: give a file (.nii.gz, .tif) or a folder for DICOM series")
    lower = out.lower()
    suffix = next((s for s in (".nii.gz", *NIFTI_SUFFIXES, *_TIFF) if lower.endswith(s)), None)
    if suffix is None and lower.rstrip(os.sep).endswith(_OTHER_FILES):
        raise ValueError(f"export writes NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff) or a DICOM folder (any other "
                         f"name), not {os.path.splitext(out.rstrip(os.sep))[1]}: {out!r} would be a folder of DICOM "
                         "series; name a file .nii.gz or .tif, or a folder")
    base = os.path.basename(lower.rstrip(os.sep))
    if suffix is None and (base.endswith(".gz") or any(f"{s}." in base or base.endswith(s) for s in (".nii", ".tif"))):
        raise ValueError(f"{out!r} looks like a misspelt file name (export writes .nii, .nii.gz, .tif or .tiff; any "
                         "other name is a folder of DICOM series)")
    if suffix is None:
        return {name: os.path.join(out, name) for name in arrays}
    stem, suffix = out[: len(out) - len(suffix)], out[len(out) - len(suffix):]  # the suffix as written: .NII.GZ
    return {name: out if name == "mean" else f"{stem}_{name}{suffix}" for name in arrays}


def _study_facts(metadata: dict) -> dict:
    """What the study the result was computed from says about its source; empty for a result that names no
    study. A study that is gone, or that is no longer the file the result was computed from, is refused:
    its geometry, units and patient would be written without a word (another scan's, or 1 mm voxels)."""
    source = metadata.get("input")
    path = source.get("path") if isinstance(source, dict) else None
    if not path:
        return {}
    way_out = ("; or give --like the images the study was simulated from, with --units stored (the values as "
               "the result holds them; not for a study simulated with --size, whose images are of another size)")
    if not os.path.isfile(path):
        raise ValueError(f"the result's study {path} is not there (moved or deleted): its units and geometry are "
                         f"unknown; put it back{way_out}")
    recorded = metadata.get("input_contents")
    if isinstance(recorded, dict):
        from recon.batch.contents import input_contents

        if input_contents(path) != recorded:
            raise ValueError(f"{path} is not the study this result was computed from: it changed since, so its "
                             f"geometry and patient would be another scan's; put the study back{way_out}")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return {}
    facts = {"study": path}
    try:  # the images the study was simulated from: never to be replaced by an export
        facts["sources"] = [str(p) for p in json.loads(attrs.get("source", "[]"))]
    except (TypeError, ValueError):
        pass
    if "intensity_window" in attrs:
        facts["window"] = tuple(float(v) for v in np.asarray(attrs["intensity_window"]).reshape(-1)[:2])
    if "image_size" in attrs:
        facts["image_size"] = [int(v) for v in np.asarray(attrs["image_size"]).reshape(-1)]
    if "affine" in attrs:
        facts["affine"] = np.asarray(attrs["affine"], dtype=np.float64)
    for key, name in (("source_units", "units"), ("source_modality", "modality"), ("source_space", "space")):
        if key in attrs:
            facts[name] = str(attrs[key])
    if "source_dicom" in attrs:
        facts["dicom"] = json.loads(attrs["source_dicom"])
    return facts


def _slices(value: np.ndarray, name: str, path: str) -> np.ndarray:
    """``(C, H, W)`` or ``(N, C, H, W)`` with one channel -> ``(N, H, W)``; slices with NaN or Inf refused,
    saying which a batch run has still to do and which it failed (its ``status`` and ``error``)."""
    shape = value.shape
    if value.ndim == 3:
        value = value[None]
    if value.ndim != 4 or value.shape[1] != 1:
        raise ValueError(f"{path}: '{name}' has shape {shape}; export takes one-channel images, shaped "
                         "(1, H, W) or (N, 1, H, W)")
    value = value[:, 0]
    bad = [i for i in range(len(value)) if not np.isfinite(value[i]).all()]
    if not bad:
        return value
    from recon.batch.store import FAILED, PENDING

    status, errors = _batch_status(path, len(value))
    failed = [i for i in bad if status[i] == FAILED]
    pending = [i for i in bad if status[i] == PENDING]
    other = [i for i in bad if i not in failed and i not in pending]
    parts = []
    if failed:
        parts.append(f"slice(s) {failed[:10]} failed in the batch run ({errors[failed[0]] or 'no error recorded'}); "
                     "a rerun fails them again until their input is mended")
    if pending:
        parts.append(f"slice(s) {pending[:10]} are not done yet: finish the batch run first")
    if other:
        kinds = " and ".join(k for k, f in (("NaN", np.isnan), ("Inf", np.isinf)) if any(f(value[i]).any() for i in other))
        parts.append(f"slice(s) {other[:10]} of '{name}' hold {kinds}")
    raise ValueError(f"{path}: " + "; ".join(parts) + "; export writes whole volumes only")


def _batch_status(path: str, n: int) -> tuple:
    """A batch output's per-slice status and error (``recon.batch.store``); "unknown" for any other result."""
    import h5py

    from recon.batch.store import read_texts

    status, errors = ["unknown"] * n, [""] * n
    try:
        with h5py.File(path, "r") as f:
            if "status" in f and len(f["status"]) == n:
                status = read_texts(f["status"])
                if "error" in f and len(f["error"]) == n:
                    errors = read_texts(f["error"])
    except OSError:
        pass
    return status, errors


def export_result(result_path, out, like=None, arrays: Sequence[str] = ARRAYS, units: str = "source",
                  overwrite: bool = False) -> list:
    """Write a result's ``arrays`` to ``out`` (see the module docstring); the paths written.

    ``units="source"`` maps values back through the study's intensity map when it is known
    (``std`` by its scale only); ``"stored"`` writes them as the result holds them.
    Everything (result, reference, every output path) is checked before anything is written.
    """
    from recon.io.dicom import derived_identity, write_dicom_series
    from recon.io.nifti import write_nifti
    from recon.result import load_result

    if units not in ("source", "stored"):
        raise ValueError(f"units must be 'source' or 'stored', got {units!r}")
    if not arrays or any(a not in ARRAYS for a in arrays) or len(set(arrays)) != len(arrays):
        raise ValueError(f"arrays must be some of {ARRAYS}, each once; got {list(arrays)}")
    result_path = os.fspath(result_path)
    result = load_result(result_path) if os.path.isfile(result_path) else None
    if result is None:
        raise ValueError(f"{result_path} does not exist or is not a file")
    values = {name: _slices(getattr(result, name), name, result_path) for name in arrays}
    needs_study = units == "source" or like is None  # its intensity map, or its geometry and identity
    facts = _study_facts(result.metadata) if needs_study else {}
    reference = _reference(like, facts, next(iter(values.values())).shape)
    targets = output_paths(out, arrays)
    inputs = [result_path, *(reference.sources if like is not None else ()), *facts.get("sources", ())]
    for out_folder in {os.path.dirname(t.rstrip(os.sep)) or "." for t in targets.values() if not _is_file_target(t)}:
        _check_dicom_out(out_folder)  # the folder of the DICOM series, once for both
    for target in targets.values():
        _check_target(target, overwrite, inputs)
    window = facts.get("window") if units == "source" else None
    if units == "source" and window is None:
        logger.info(("the result's study has no intensity map" if facts else "the result names no study")
                    + ": values are written as stored")
    if window is None and reference.units == "HU":  # not Hounsfield units: not CT image storage either
        reference = Volume(reference.data, affine=reference.affine, sources=reference.sources, dicom=reference.dicom,
                           space=reference.space)
    # the mean and std series share one study (and frame of reference) where the source gives none
    reference = dataclasses.replace(reference, dicom=derived_identity(reference.dicom, reference.affine is not None))
    written = []
    for name, target in targets.items():
        value = values[name].astype(np.float64)
        if window is not None:
            low, high = window
            value = value * (high - low) + (low if name == "mean" else 0.0)
        if target.lower().endswith(NIFTI_SUFFIXES):
            written.append(write_nifti(target, value, reference.affine, overwrite=overwrite, space=reference.space))
        elif target.lower().endswith(_TIFF):
            written.append(_write_tiff(target, value.astype(np.float32), overwrite))
        else:
            method = result.metadata.get("method") or (result.metadata.get("settings") or {}).get("method") or "result"
            written += write_dicom_series(target, value, reference=reference, description=f"diffrecon {method} {name}",
                                          series_number=901 + ARRAYS.index(name), overwrite=overwrite)
    return written


def _write_tiff(path: str, pages: np.ndarray, overwrite: bool) -> str:
    """``pages`` as a float32 TIFF at ``path``, written beside it and moved into place: the file appears
    whole or not at all, and a link at that name is replaced, never written through to what it points at.
    The pages are MINISBLACK: tifffile's default makes 3 or 4 of them one RGB(A) picture in separate planes,
    which reads back as one colour image."""
    import tifffile

    from recon.files import fresh_temp, move_into_place

    temp = fresh_temp(path)
    try:
        tifffile.imwrite(temp, pages, photometric="minisblack")
        move_into_place(temp, path, overwrite, "it was written")
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def _reference(like, facts: dict, shape: tuple) -> Volume:
    """The geometry and identity to write with: ``like``'s, else the study's, else none (1 mm voxels)."""
    if like is not None:
        from recon.io.volume import read_images

        volume = read_images(like)
        if volume.data.shape != tuple(shape):
            resized = volume.data.shape[0] == shape[0] and facts.get("image_size") == list(shape[1:])
            raise ValueError(f"{os.fspath(like)} has slices {volume.data.shape}, the result {tuple(shape)}: "
                             + ("the study was resized (recon simulate --size), and --like takes images of the "
                                "result's size; export without --like, the study in place, to use its resized "
                                "geometry" if resized else "give the images the study was simulated from"))
        return dataclasses.replace(volume, data=np.zeros(shape, np.float32))
    affine = facts.get("affine")
    return Volume(np.zeros(shape, np.float32), affine=affine, units=facts.get("units"), modality=facts.get("modality"),
                  sources=[facts.get("study", "")], dicom=facts.get("dicom", {}),
                  space=facts.get("space") if affine is not None else None)


def _is_file_target(target: str) -> bool:
    """A NIfTI or TIFF file, not a folder of DICOM series."""
    return target.lower().endswith((*NIFTI_SUFFIXES, *_TIFF))


def _check_target(target: str, overwrite: bool, inputs=()) -> None:
    """Refuse a target that exists (without ``overwrite``) or is one of ``inputs`` (the result, the ``like``
    images), even with ``overwrite``: ``--like scan.nii --out scan.nii`` would replace the scan."""
    from recon.files import check_can_create, check_new_file

    if _is_file_target(target):
        check_new_file(target, overwrite, inputs)
        return
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is not a folder; a DICOM series is written as a folder")
    clash = [p for p in inputs if os.path.isdir(target) and os.path.dirname(os.path.abspath(p)) == os.path.abspath(target)]
    if clash:  # --like OUT/mean --out OUT --overwrite: the like series' own files would be replaced
        raise ValueError(f"{target} holds the input {clash[0]}; writing the series there would replace it: choose "
                         "another folder for --out")
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise ValueError(f"{target} is not empty; choose a new folder or pass --overwrite")
    foreign = [e for e in os.listdir(target) if not (e.startswith("IM") and e.endswith(".dcm"))] \
        if os.path.isdir(target) else []
    if foreign:  # found here, not after the other array's series has been replaced
        raise ValueError(f"{target} holds files this export did not write ({foreign[0]}); choose a new folder")
    check_can_create(target)


def _check_dicom_out(out: str) -> None:
    """Refuse a DICOM ``--out`` folder whose series would join a DICOM series already there: one holding DICOM
    files in it or below it (the source's folder, a patient folder), or lying inside one that does. Checked
    once for the mean/ and std/ series it will hold."""
    if os.path.lexists(out) and not os.path.isdir(out):  # --out RESULT.h5: not "cannot write into"
        raise ValueError(f"{out} exists and is not a folder; give --out a new folder (DICOM), or a name ending "
                         "in .nii, .nii.gz, .tif or .tiff")
    series = _dicom_files_under(out)
    if series:  # the source's folder (or a patient folder above it): it would no longer read as one series
        raise ValueError(f"{out} holds DICOM files ({series[0]}{' and more' if len(series) > 1 else ''}): a "
                         "series written into it (as mean/, std/) would make it read as several; choose a new "
                         "folder for --out")
    above = _dicom_folder_above(out)
    if above is not None:  # --out SERIES/recon: SERIES is read with its subfolders, so it would hold three
        raise ValueError(f"{out} lies inside {above[0]}, which holds DICOM files ({above[1]}): a series written "
                         "below it would make it read as several; choose a folder outside it for --out")


def _dicom_folder_above(folder: str, levels: int = 3, most: int = 200):
    """``(ancestor, file)`` for the nearest of the ``levels`` folders above ``folder`` that holds a DICOM file
    itself (among its first ``most`` entries, by suffix or ``DICM`` marker); None where none does."""
    from recon.io.volume import is_dicom_file

    here = os.path.abspath(folder)
    for _ in range(levels):
        here, child = os.path.dirname(here), here
        if here == child:
            return None
        try:
            names = sorted(n for n in os.listdir(here) if not n.startswith("."))[:most]
        except OSError:
            continue
        for name in names:
            path = os.path.join(here, name)
            try:
                if is_dicom_file(path):
                    return here, path
            except OSError:
                continue
    return None


def _dicom_files_under(folder: str, enough: int = 2, depth: int = 3) -> list:
    """The first ``enough`` DICOM files (by suffix or ``DICM`` marker) in ``folder`` or up to ``depth`` folders
    below it (patient/study/series), outside the ``mean/`` and ``std/`` series an earlier export wrote there;
    none when it does not exist. A DICOM folder is read with its subfolders, so a series one level down
    (``patient/CT/``) counts as much as one in it."""
    from recon.io.volume import is_dicom_file

    found = []
    for root, dirs, names in os.walk(folder):
        level = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        dirs[:] = [] if level >= depth else sorted(
            d for d in dirs if not d.startswith(".") and not (root == folder and d in ARRAYS))
        for name in sorted(n for n in names if not n.startswith(".")):  # as recon.io.dicom reads a folder
            path = os.path.join(root, name)
            if os.access(path, os.R_OK) and is_dicom_file(path):
                found.append(path)
                if len(found) >= enough:
                    return found
    return found
