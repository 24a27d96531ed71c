"""Batch reconstruction of HDF5 studies: ``recon.batch.run`` and the ``recon batch`` command.

Layouts: the package's own (``native``), fastMRI and LoDoPaB-CT (see docs/batch.md). Outputs are
resumable and survive kills (``store``); slices run in this process or on Dask (``dask_runner``).
"""

from importlib import import_module

__all__ = ["run", "BatchSummary", "BatchSettings", "SettingsConflict", "DEFAULTS"]

_LAZY = {
    "run": "recon.batch.runner",
    "BatchSummary": "recon.batch.runner",
    "SettingsConflict": "recon.batch.store",
    "BatchSettings": "recon.batch.settings",
    "DEFAULTS": "recon.batch.settings",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recon.batch' has no attribute {name!r}")
