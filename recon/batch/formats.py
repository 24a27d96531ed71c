"""Recognising an input file's layout and opening it with its layout's class.

The classes live in their layout modules (:mod:`recon.batch.native`, :mod:`recon.batch.fastmri`,
:mod:`recon.batch.lodopab`), which share :mod:`recon.batch.layouts` and do not import this module.

Problems with a whole file (unreadable, a dataset or attribute missing, shapes that disagree with
the geometry) raise ``ValueError`` when the file is opened, before any work starts.
"""

from __future__ import annotations

import os

from recon.batch.fastmri import FastMRIFile
from recon.batch.layouts import LAYOUTS, InputFile, SliceInput, open_h5, slice_seed
from recon.batch.lodopab import LoDoPaBFile
from recon.batch.native import NativeFile
from recon.batch.settings import BatchSettings

__all__ = ["LAYOUTS", "InputFile", "SliceInput", "detect_layout", "open_input", "slice_seed"]

#: Layout name -> the class that reads it.
CLASSES = {cls.layout: cls for cls in (NativeFile, FastMRIFile, LoDoPaBFile)}
assert tuple(CLASSES) == LAYOUTS


def detect_layout(path: str) -> str:
    """Recognise a file's layout from its datasets."""
    with open_h5(path) as f:
        if "kspace" in f:
            return "fastmri"
        if "measurement" in f:
            return "native"
        if "data" in f and f["data"].ndim == 3 and f["data"].shape[1:] == (1000, 513):
            return "lodopab"
        found = ", ".join(sorted(f.keys())) or "nothing"
    raise ValueError(
        f"input {path!r}: cannot tell its layout; expected a 'measurement' dataset (native layout), 'kspace' "
        f"(fastMRI) or 'data' of shape (n, 1000, 513) (LoDoPaB-CT observations), found {found}"
    )


def open_input(path: str, settings: BatchSettings) -> InputFile:
    """Open ``path`` with the layout named in ``settings.format`` (or recognised); validate it.

    Whatever is wrong with the file (a damaged object header, a dataset that is a scalar or a group,
    an attribute of the wrong type) becomes one ``ValueError`` naming the file, before any work.
    """
    layout = settings.format
    try:
        if layout == "auto":
            layout = detect_layout(path)
        if layout not in CLASSES:
            raise ValueError(f"unknown input format {layout!r}; expected one of {('auto',) + LAYOUTS}")
        return CLASSES[layout](path, settings)
    except ValueError as err:
        if repr(os.fspath(path)) in str(err):
            raise
        raise ValueError(f"input {os.fspath(path)!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - h5py's KeyError on a damaged header, a group where data should be, ...
        raise ValueError(f"input {os.fspath(path)!r} cannot be read as a {layout} file (damaged, or a dataset or "
                         f"attribute of the wrong kind?): {type(err).__name__}: {err}") from err
