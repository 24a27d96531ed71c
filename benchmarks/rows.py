"""The JSON-lines file a benchmark writes its rows to: opt-in, and never an earlier run's file replaced silently.

Two runs side by side with the same default name used to rewrite each other's rows, and a second
command of a documented series erased the first's; now ``--out`` names the file, an existing one is
refused unless ``--overwrite`` says so, and every row is printed as a JSON line either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


class RowFile:
    """Collects rows, prints each, and rewrites ``path`` (when given) with all of them after each row."""

    def __init__(self, path: Optional[Path], overwrite: bool = False):
        self.path, self.rows = (Path(path) if path else None), []
        if self.path is not None and self.path.exists() and self.path.stat().st_size and not overwrite:
            raise SystemExit(f"{self.path} exists (an earlier run's rows): name another --out, or pass --overwrite")

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path is not None:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def add_arguments(parser) -> None:
    """``--out`` and ``--overwrite``, the same in every script that writes rows this way."""
    parser.add_argument("--out", type=Path, default=None, help="write the rows here as JSON lines (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
