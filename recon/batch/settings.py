"""Batch settings: one typed record, built from defaults, the TOML file and command-line overrides.

A run is described by one :class:`BatchSettings`. It is built in three layers, later layers winning::

    field defaults  <-  TOML file (``--config``)  <-  keyword arguments / command-line flags

and validated as a whole before a single slice is touched: an unknown key, a wrong type or a value
out of range raises ``ValueError`` naming the key (and the file it came from). Method-specific
options that ``recon.reconstruct`` accepts go into the ``[options]`` table of the TOML file.

Each field belongs to one of four groups, declared beside it: what to *compute* (method, prior,
steps, seed, ...), how to read the *input* (its layout, its noise level), the *geometry* the input
files do not say themselves, and how to *run* it (workers, scheduler, progress). The first three
form the *fingerprint* stored in each output, so a re-run with other settings is refused rather
than silently mixed into the old output; how to run is left out, so a run on Dask resumes a single-process run and vice versa. Geometry settings that do
not apply to a file (``--n-angles`` for a fastMRI file, ``--acceleration`` for a file with its own
mask) are named by each layout, and :meth:`BatchSettings.for_file` sets them back to their defaults
before that file's fingerprint is taken.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from operators.masks import PATTERNS
from recon.batch.layouts import LAYOUTS
from recon.methods import volume
from recon.methods.checks import MAX_COUNT
from recon.methods.registry import (ADAPT_MODES, CALL_OPTIONS, METHOD_NAMES, METHODS, PRIOR_METHODS, STEERABLE_METHODS,
                                   check_prior_use)
from recon.operator_kinds import KINDS as OPERATORS

FORMATS = ("auto", *LAYOUTS)
#: ``self_validation``: one choice per file (its middle slice's), or each slice its own.
SELF_VALIDATION = ("volume", "slice")
MASK_PATTERNS = PATTERNS
COMPUTE, INPUT, GEOMETRY, EXECUTION = "compute", "input", "geometry", "execution"


def _setting(default, group: str, **kwargs):
    return field(default=default, metadata={"group": group}, **kwargs)


@dataclass(frozen=True)
class BatchSettings:
    """Everything a ``recon batch`` run needs, validated (build it with :func:`validate` or :func:`resolve`)."""

    # what to compute
    method: str = _setting("ccdf", COMPUTE)
    prior: Optional[str] = _setting(None, COMPUTE)  # None: the built-in prior of the modality
    steps: Optional[int] = _setting(None, COMPUTE)  # None: the method's (registry.METHODS)
    samples: int = _setting(8, COMPUTE)
    t0: Any = _setting(None, COMPUTE)  # None: the method's ("auto" for ccdf)
    seed: int = _setting(0, COMPUTE)
    options: Mapping = field(default_factory=dict, metadata={"group": COMPUTE})  # more recon.reconstruct arguments
    save_samples: bool = _setting(False, COMPUTE)
    # steering of ccdf, diffusion and genreg: "off", "auto", "on" or a table of options; None: per file
    # (:meth:`BatchSettings.for_volume`), "auto" for ccdf over volumes long enough to afford it
    adapt: Any = _setting(None, COMPUTE)
    self_validation: str = _setting("volume", COMPUTE)  # "volume": one choice per file, made on its middle slice
    # what the input files do not say themselves
    format: str = _setting("auto", INPUT)
    operator: Optional[str] = _setting(None, GEOMETRY)
    n_angles: Optional[int] = _setting(None, GEOMETRY)
    n_detectors: Optional[int] = _setting(None, GEOMETRY)
    source_distance: Optional[float] = _setting(None, GEOMETRY)
    detector_distance: Optional[float] = _setting(None, GEOMETRY)
    acceleration: Optional[float] = _setting(None, GEOMETRY)
    center_fraction: Optional[float] = _setting(None, GEOMETRY)
    mask_pattern: Optional[str] = _setting(None, GEOMETRY)  # None: the file's own, else "random"
    factor: Optional[int] = _setting(None, GEOMETRY)
    noise_sigma: Optional[float] = _setting(None, INPUT)  # overrides the file's; fastMRI/LoDoPaB estimate it
    # how to run
    device: str = _setting("auto", EXECUTION)
    threads: int = _setting(1, EXECUTION)
    workers: int = _setting(0, EXECUTION)
    scheduler: Optional[str] = _setting(None, EXECUTION)
    overwrite: bool = _setting(False, EXECUTION)
    checkpoint_seconds: float = _setting(60.0, EXECUTION)
    dry_run: bool = _setting(False, EXECUTION)
    progress: Optional[bool] = _setting(None, EXECUTION)  # None: bars only when stderr is a terminal

    def as_dict(self) -> dict:
        """Plain data, as stored in each output's metadata."""
        return {key: (dict(value) if key == "options" else value) for key, value in vars(self).items()}

    def with_method_defaults(self) -> "BatchSettings":
        """These settings with an unset ``steps`` or ``t0`` at the method's default (unset where it takes none)."""
        method = METHODS[self.method]
        return dataclasses.replace(self, **{key: method.defaults[key] for key in CALL_OPTIONS
                                            if getattr(self, key) is None and method.takes(key)})

    def for_file(self, unused=()) -> "BatchSettings":
        """These settings as one file sees them: the geometry keys in ``unused`` at their defaults.

        A setting that does not apply to a file computes the same numbers as no setting, so it must
        not block resuming that file's output. ``format`` always goes back to "auto": the layout it
        picked is recorded with the file itself.
        """
        return dataclasses.replace(self, **{key: DEFAULTS[key] for key in {"format", *unused} if key in DEFAULTS})

    def for_volume(self, n_slices: int) -> "BatchSettings":
        """These settings for a file of ``n_slices`` slices: an unset ``adapt`` resolved (:func:`default_adapt`)."""
        if self.adapt is not None:
            return self
        return dataclasses.replace(self, adapt=default_adapt(self, n_slices))

    def shares_choice(self) -> bool:
        """Whether the slices of a file share one self-validation (made on the middle slice).

        Only where a slice self-validates at all: a prior method with K >= 2 (the std is calibrated
        on held-out data) or with steering on.
        """
        return self.self_validation == "volume" and self.method in PRIOR_METHODS and (
            self.samples >= 2 or self.adapt != "off")

    def output_settings(self) -> dict:
        """What determines the output numbers: compute and geometry settings, the method's defaults filled in."""
        return {key: value for key, value in self.with_method_defaults().as_dict().items() if key not in EXECUTION_KEYS}

    def fingerprint(self, extra: Optional[Mapping[str, Any]] = None) -> str:
        """sha256 of :meth:`output_settings` (plus e.g. the prior checksum), for resume checks.

        An unset ``mask_pattern`` hashes as ``"random"``, the default's spelling before unset became
        ``None`` (it meant the same: the file's own pattern, else random), so earlier outputs still
        resume; likewise ``steps`` and ``t0`` of a method that takes none hash as the old defaults 20
        and "auto". ``adapt`` "off" and a ``self_validation`` that does not apply (:meth:`shares_choice`)
        are left out, as 0.8.0 had neither.
        """
        if self.adapt is None:
            raise ValueError("resolve an unset 'adapt' for its file first (BatchSettings.for_volume)")
        payload_settings = self.output_settings()
        for key, spelling in (("mask_pattern", "random"), ("steps", 20), ("t0", "auto")):
            if payload_settings[key] is None:
                payload_settings[key] = spelling
        # settings added in 0.9.0, left out where they compute what 0.8.0 did (each slice its own choice)
        if payload_settings["adapt"] == "off":
            del payload_settings["adapt"]
        elif isinstance(payload_settings["adapt"], Mapping) and set(payload_settings["adapt"]) <= {"mode"}:
            payload_settings["adapt"] = payload_settings["adapt"].get("mode", "on")  # {mode = "on"} is "on"
        if not self.shares_choice():
            del payload_settings["self_validation"]
        payload = {"settings": payload_settings, "extra": dict(extra or {})}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def describe(self) -> str:
        """Human-readable TOML-like listing (for ``--dry-run``)."""
        settings = self.with_method_defaults().as_dict()
        options = settings.pop("options")
        unset = {"adapt": f'"auto" for ccdf over files of {volume.AUTO_ADAPT_SLICES} slices or more, else "off"'}
        return "\n".join([f"{key} = {json.dumps(value)}" + (f"  # unset: {unset[key]}" if value is None and key in unset else "")
                           for key, value in settings.items()]
                         + [f"options.{key} = {json.dumps(value)}" for key, value in options.items()])


def default_adapt(settings: "BatchSettings", n_slices: int) -> str:
    """An unset ``adapt`` for a file of ``n_slices``: the volume's rule (``recon.methods.volume.default_adapt``)
    where the file shares one self-validation, "off" where each slice self-validates (~14x per slice)."""
    if settings.self_validation != "volume":
        return "off"
    return volume.default_adapt(settings.method, settings.samples, n_slices)


def _keys(group: str) -> tuple:
    return tuple(f.name for f in dataclasses.fields(BatchSettings) if f.metadata["group"] == group)


DEFAULTS: Mapping[str, Any] = BatchSettings().as_dict()
EXECUTION_KEYS = _keys(EXECUTION)  # do not change a single output number
GEOMETRY_KEYS = _keys(GEOMETRY)  # describe an input file, each for some layouts and operators only


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


def validate(settings: Mapping[str, Any], source: str = "") -> BatchSettings:
    """Check every key and value of a mapping; return the :class:`BatchSettings`. ``source`` names where they came from.

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
    if isinstance(s["adapt"], Mapping):  # a table: AdaptOptions and "mode", as reconstruct's adapt takes
        from recon.methods.selfvalidation import parse_adapt

        try:
            _, options = parse_adapt(dict(s["adapt"]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"setting 'adapt'{where}: {error}") from None
        if options.objective == "misfit" and s["method"] in METHODS and not METHODS[s["method"]].steers_while_sampling:
            raise ValueError(f"setting 'adapt'{where}: objective 'misfit' adapts while sampling, which "
                             f"{s['method']!r} does not do; use the default objective 'denoising'")
    elif s["adapt"] is not None:
        _check("adapt", s["adapt"] in ADAPT_MODES, f"one of {ADAPT_MODES} or a table of adapt options",
               s["adapt"], where)
    if s["adapt"] not in ("off", None) and s["method"] not in STEERABLE_METHODS:
        raise ValueError(f"setting 'adapt'{where}: only {sorted(STEERABLE_METHODS)} adapt the prior, "
                         f"not {s['method']!r}; leave adapt unset")
    try:
        check_prior_use(s["method"], s["prior"])
    except ValueError as err:
        raise ValueError(f"setting 'prior'{where}: {err}") from None
    _check("self_validation", s["self_validation"] in SELF_VALIDATION, f"one of {SELF_VALIDATION}",
           s["self_validation"], where)
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
    return BatchSettings(**s)


def load_toml(path) -> dict:
    """Read a settings file; a syntax error becomes a ``ValueError`` naming the file."""
    import tomllib

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"settings file {path!r} is a folder; give a TOML file")
    if not os.path.isfile(path):
        raise ValueError(f"settings file {path!r} does not exist")
    with open(path, "rb") as handle:
        try:
            data = tomllib.load(handle)
        except UnicodeDecodeError:
            raise ValueError(f"settings file {path!r} is not a text (TOML) file") from None
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


def resolve(config: Optional[str] = None, **overrides) -> BatchSettings:
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


def check_options(settings: BatchSettings, source: str = "settings") -> None:
    """Option names the chosen method does not accept, and bad option values, fail here, not once per slice."""
    if not settings.options:
        return
    from recon.methods.arguments import COMMON_OPTIONS, check_method_options, method_options

    known = set(method_options(settings.method)) | set(COMMON_OPTIONS)
    for key in settings.options:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean 'options.{close[0]}'?" if close else ""
            raise ValueError(f"unknown setting 'options.{key}' (from {source}) for method {settings.method!r}{hint} "
                             f"Known options: {', '.join(sorted(known))}")
    try:
        check_method_options(settings.method, settings.options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad setting in 'options' (from {source}): {error}") from None
