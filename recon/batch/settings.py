"""Batch settings: defaults, the TOML file, command-line overrides, and validation before any work.

A run is described by one flat dictionary. It is built in three layers, later layers winning::

    DEFAULTS  <-  TOML file (``--config``)  <-  keyword arguments / command-line flags

and validated as a whole before a single slice is touched: an unknown key, a wrong type or a value
out of range raises ``ValueError`` naming the key (and the file it came from). Method-specific
options that ``recon.reconstruct`` accepts go into the ``[options]`` table of the TOML file.

Only part of the settings changes the numbers in an output (method, prior, steps, seed, ...): those
form the *fingerprint* stored in each output, so that a re-run with other settings is refused rather
than silently mixed into the old output. How the run is executed (workers, scheduler, progress)
is left out of the fingerprint: a run on Dask resumes a single-process run and vice versa. So are
input settings that do not apply to a file (``--n-angles`` for a fastMRI file, ``--acceleration``
for a file with its own mask): each layout names them, and :func:`for_file` sets them back to their
defaults before that file's fingerprint is taken.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from typing import Any, Mapping, Optional

from operators.masks import PATTERNS
from recon.batch.layouts import LAYOUTS
from recon.methods.checks import MAX_COUNT
from recon.methods.registry import CALL_OPTIONS, METHOD_NAMES, METHODS
from recon.operator_kinds import KINDS as OPERATORS

FORMATS = ("auto", *LAYOUTS)
MASK_PATTERNS = PATTERNS

DEFAULTS: dict[str, Any] = {
    # what to compute
    "method": "ccdf",
    "prior": None,  # None: the built-in prior of the modality ("ct", "mri", "natural")
    "steps": None,  # None: the method's (registry.METHODS); refused for methods without steps
    "samples": 8,
    "t0": None,  # None: the method's ("auto" for ccdf); refused for the other methods
    "seed": 0,
    "options": {},  # extra keyword arguments for recon.reconstruct
    "save_samples": False,
    # what the input files do not say themselves
    "format": "auto",
    "operator": None,
    "n_angles": None,
    "n_detectors": None,
    "source_distance": None,
    "detector_distance": None,
    "acceleration": None,
    "center_fraction": None,
    "mask_pattern": None,  # None: the file's own (native 'mask_pattern' attribute), else "random"
    "factor": None,
    "noise_sigma": None,  # overrides the file's noise level; fastMRI/LoDoPaB estimate it otherwise
    # how to run
    "device": "auto",
    "threads": 1,
    "workers": 0,
    "scheduler": None,
    "overwrite": False,
    "checkpoint_seconds": 60.0,
    "dry_run": False,
    "progress": None,  # None: bars only when stderr is a terminal
}

# Keys that do not change a single output number; everything else is part of the fingerprint.
EXECUTION_KEYS = ("device", "threads", "workers", "scheduler", "overwrite", "checkpoint_seconds", "dry_run", "progress")

# Settings that describe the geometry of an input file, each for some layouts and operators only.
GEOMETRY_KEYS = ("operator", "n_angles", "n_detectors", "source_distance", "detector_distance", "acceleration",
                 "center_fraction", "mask_pattern", "factor")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (TOML and JSON can spell inf and nan; no setting means either)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(key: str, ok: bool, expected: str, value, source: str) -> None:
    if not ok:
        raise ValueError(f"setting {key!r}{source}: expected {expected}, got {value!r}")


def _optional_positive(key, value, source, integer=False):
    if value is None:
        return
    test = _is_int if integer else _is_number
    _check(key, test(value) and value > 0, "a positive " + ("integer" if integer else "number"), value, source)


def validate(settings: Mapping[str, Any], source: str = "") -> dict:
    """Check every key and value; return a plain dict. ``source`` names where they came from.

    Raises
    ------
    ValueError
        Naming the first bad key: unknown (with the closest known key), wrong type or out of range.
    """
    where = f" (from {source})" if source else ""
    for key in settings:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown setting {key!r}{where}{hint} Known settings: {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **settings}
    _check("method", s["method"] in METHODS, f"one of {METHOD_NAMES}", s["method"], where)
    _check("prior", s["prior"] is None or (isinstance(s["prior"], str) and s["prior"] != ""),
           "a prior name or a path", s["prior"], where)
    _check("samples", _is_int(s["samples"]) and 1 <= s["samples"] <= MAX_COUNT, f"an integer >= 1 and <= {MAX_COUNT}",
           s["samples"], where)
    for key in CALL_OPTIONS:  # steps, t0: the method's own checks, and refused where it takes none
        if s[key] is not None:
            try:
                METHODS[s["method"]].resolve({key: s[key]})
            except (TypeError, ValueError) as error:
                raise ValueError(f"setting {key!r}{where}: {error}") from None
    _check("seed", _is_int(s["seed"]) and s["seed"] >= 0, "an integer >= 0", s["seed"], where)
    _check("options", isinstance(s["options"], Mapping), "a table of method options", s["options"], where)
    for flag in ("save_samples", "overwrite", "dry_run"):
        _check(flag, isinstance(s[flag], bool), "true or false", s[flag], where)
    _check("progress", s["progress"] is None or isinstance(s["progress"], bool), "true, false or unset",
           s["progress"], where)
    _check("format", s["format"] in FORMATS, f"one of {FORMATS}", s["format"], where)
    _check("operator", s["operator"] is None or s["operator"] in OPERATORS, f"one of {OPERATORS}", s["operator"], where)
    for key in ("n_angles", "n_detectors", "factor"):
        _optional_positive(key, s[key], where, integer=True)
    for key in ("source_distance", "detector_distance", "acceleration"):
        _optional_positive(key, s[key], where)
    _check("center_fraction", s["center_fraction"] is None or (_is_number(s["center_fraction"]) and 0 < s["center_fraction"] < 1),
           "a number in (0, 1)", s["center_fraction"], where)
    _check("mask_pattern", s["mask_pattern"] is None or s["mask_pattern"] in MASK_PATTERNS, f"one of {MASK_PATTERNS}",
           s["mask_pattern"], where)
    _check("noise_sigma", s["noise_sigma"] is None or (_is_number(s["noise_sigma"]) and s["noise_sigma"] >= 0),
           "a number >= 0", s["noise_sigma"], where)
    _check("device", isinstance(s["device"], str) and (s["device"] in ("auto", "cpu") or s["device"].startswith("cuda")),
           "'auto', 'cpu' or 'cuda[:N]'", s["device"], where)
    _check("threads", _is_int(s["threads"]) and s["threads"] >= 0, "an integer >= 0 (0: torch's default)",
           s["threads"], where)
    _check("workers", _is_int(s["workers"]) and s["workers"] >= 0, "an integer >= 0 (0: this process only)",
           s["workers"], where)
    _check("scheduler", s["scheduler"] is None or (isinstance(s["scheduler"], str) and s["scheduler"] != ""),
           "a scheduler address such as 'tcp://host:8786'", s["scheduler"], where)
    if s["workers"] and s["scheduler"]:
        raise ValueError(f"settings 'workers' and 'scheduler'{where} exclude each other: start a local cluster "
                         "(--workers N) or join one (--scheduler ADDRESS), not both")
    _check("checkpoint_seconds", _is_number(s["checkpoint_seconds"]) and s["checkpoint_seconds"] >= 0,
           "a number of seconds >= 0", s["checkpoint_seconds"], where)
    s["options"] = dict(s["options"])
    return s


def load_toml(path) -> dict:
    """Read a settings file; a syntax error becomes a ``ValueError`` naming the file."""
    import tomllib

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"settings file {path!r} does not exist")
    with open(path, "rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"settings file {path!r} is not valid TOML: {err}{_toml_line(path, err)}") from err
    validate(data, source=path)  # name the file in errors about its own keys
    return data


def _toml_line(path: str, err: Exception) -> str:
    """The offending line of a TOML file (it names the key), for syntax errors."""
    found = re.search(r"at line (\d+)", str(err))
    if not found:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    number = int(found.group(1))
    return f": line {number}: {lines[number - 1].strip()!r}" if 0 < number <= len(lines) else ""


def resolve(config: Optional[str] = None, **overrides) -> dict:
    """Defaults <- TOML file <- overrides (``None`` overrides mean "not given"), validated."""
    layered: dict[str, Any] = {}
    if config is not None:
        layered.update(load_toml(config))
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = [key for key in given if key not in DEFAULTS]
    if unknown:
        validate({unknown[0]: given[unknown[0]]}, source="arguments")
    if "options" in given:
        given["options"] = {**layered.get("options", {}), **given["options"]}
    layered.update(given)
    source = "arguments" if config is None else f"{config} and arguments"
    return validate(layered, source=source)


def check_options(settings: Mapping[str, Any], source: str = "settings") -> None:
    """Option names the chosen method does not accept, and bad option values, fail here, not once per slice."""
    if not settings["options"]:
        return
    from recon.methods.api import COMMON_OPTIONS, check_method_options, method_options

    known = set(method_options(settings["method"])) | set(COMMON_OPTIONS)
    for key in settings["options"]:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean 'options.{close[0]}'?" if close else ""
            raise ValueError(f"unknown setting 'options.{key}' (from {source}) for method {settings['method']!r}{hint} "
                             f"Known options: {', '.join(sorted(known))}")
    try:
        check_method_options(settings["method"], settings["options"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad setting in 'options' (from {source}): {error}") from None


def with_method_defaults(settings: Mapping[str, Any]) -> dict:
    """``settings`` with an unset ``steps`` or ``t0`` at the method's default (unset where it takes none)."""
    method = METHODS[settings["method"]]
    defaults = {key: method.defaults[key] for key in CALL_OPTIONS if settings.get(key) is None and method.takes(key)}
    return {**settings, **defaults}


def fingerprint_settings(settings: Mapping[str, Any]) -> dict:
    """The part of the settings that determines the output numbers (the method's defaults filled in)."""
    return {key: value for key, value in with_method_defaults(settings).items() if key not in EXECUTION_KEYS}


def for_file(settings: Mapping[str, Any], unused=()) -> dict:
    """``settings`` as one file sees them: the keys in ``unused`` at their defaults.

    A setting that does not apply to a file computes the same numbers as no setting, so it must
    not block resuming that file's output. ``format`` always goes back to "auto": the layout it
    picked is recorded with the file itself.
    """
    reset = {"format", *unused}
    return {**settings, **{key: DEFAULTS[key] for key in reset if key in settings}}


def fingerprint(settings: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> str:
    """sha256 of the output-determining settings (plus e.g. the prior checksum), for resume checks.

    An unset ``mask_pattern`` hashes as ``"random"``, the default's spelling before unset became
    ``None`` (it meant the same: the file's own pattern, else random), so earlier outputs still resume;
    likewise ``steps`` and ``t0`` of a method that takes none hash as the old defaults 20 and "auto".
    """
    payload_settings = fingerprint_settings(settings)
    for key, spelling in (("mask_pattern", "random"), ("steps", 20), ("t0", "auto")):
        if key in payload_settings and payload_settings[key] is None:
            payload_settings[key] = spelling
    payload = {"settings": payload_settings, "extra": dict(extra or {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def describe(settings: Mapping[str, Any]) -> str:
    """Human-readable TOML-like listing of resolved settings (for ``--dry-run``)."""
    lines = []
    settings = with_method_defaults(settings)
    for key, value in settings.items():
        if key == "options":
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    for key, value in settings.get("options", {}).items():
        lines.append(f"options.{key} = {json.dumps(value)}")
    return "\n".join(lines)
