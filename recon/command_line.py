"""Values that several ``recon`` commands read from the command line the same way.

A method option is ``--option KEY=VALUE`` in ``recon reconstruct`` and ``recon batch`` alike, and
``--t0`` takes a number or a rule's name in both: one parser each, so the commands cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence


def parse_option_pairs(pairs: Optional[Sequence[str]]) -> Optional[dict]:
    """``KEY=VALUE`` pairs -> dict; values are JSON where they parse (numbers, true, lists), else strings.

    ``None`` when no pair is given; a pair without ``=``, an empty key or a key given twice is a
    ``ValueError`` (the second value would silently win)."""
    if not pairs:
        return None
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def parse_t0(value: Optional[str]):
    """``--t0``: ``None``, ``"auto"``, ``"validate"`` or a number (checked in (0, 1] by the method)."""
    if value is None or value in ("auto", "validate"):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected 'auto', 'validate' or a number in (0, 1], got {value!r}") from None
