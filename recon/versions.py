"""Versions of diffrecon and the libraries a reconstruction depends on, for bug reports and metadata.

Read from the installed distributions' metadata, so nothing is imported: ``recon --version`` stays
fast and a broken install of one library does not hide the others.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Dict, Optional

#: Distributions reported, in order (their names on the package index).
LIBRARIES = ("torch", "deepinv", "astra-toolbox", "numpy", "h5py")


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> Dict[str, Optional[str]]:
    """``{"diffrecon": ..., "python": ..., "torch": ..., ...}``; ``None`` for a library not installed.

    diffrecon's is ``recon.__version__``: the code that runs, even from a source tree whose installed
    metadata is stale or missing.
    """
    from recon import __version__

    versions: Dict[str, Optional[str]] = {"diffrecon": __version__, "python": platform.python_version()}
    versions.update((name, _version(name)) for name in LIBRARIES)
    return versions
