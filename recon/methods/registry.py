"""Every reconstruction method, one record each: what it runs, whether it uses a prior, its options.

A :class:`Method` names the function that runs (``run(problem, **options)``, a generator of
``recon.progress.Step`` s that returns the samples), says
whether it needs a prior, and owns its options: their defaults (the function's own keyword defaults,
plus the ones ``reconstruct`` resolves before calling it, such as ccdf's ``t0="auto"``) and their
checks. ``reconstruct`` (api.py), ``recon reconstruct``, ``recon batch`` and the viewer take their
method names, defaults and option checks from :data:`METHODS`, so a method added here is offered
by all of them, with the same defaults.

The records name their functions (``"module:function"`` in ``recon.methods``) and import them when
first asked, so the names and :data:`PRIOR_METHODS` are known without importing torch (the CLI's
help, the viewer's widget module).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib import import_module
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from recon.methods.checks import check_number, check_positive_int

#: Options of a method's ``run`` that ``reconstruct`` takes as its own parameters, not in ``**options``.
CALL_OPTIONS = ("steps", "t0")


def check_t0(t0):
    """``"auto"``, ``"validate"`` or a number in (0, 1], else ``ValueError``."""
    if isinstance(t0, str) and t0 in ("auto", "validate"):
        return t0
    try:
        return check_number("t0", t0, 0.0, low_inclusive=False, high=1.0)
    except ValueError:
        raise ValueError(f"t0 must be 'auto', 'validate' or a number in (0, 1], got {t0!r}") from None


#: Checks of the options several methods share, by name.
_SHARED_CHECKS: Mapping[str, Callable] = {"steps": lambda value: check_positive_int("steps", value), "t0": check_t0}


@dataclass(frozen=True)
class Method:
    """One method: ``run(problem, **options)``, whether it uses a prior, its defaults and checks.

    ``function`` and ``checker`` are ``"module:function"`` in ``recon.methods``: the method and its
    check of its own options (``check(options)`` raises ``ValueError`` for a bad value; all options
    given, defaults filled in). ``resolved_defaults`` are defaults that ``reconstruct`` turns into
    values before calling ``run`` (ccdf's ``t0="auto"``, picked from the initial estimate).
    """

    name: str
    function: str
    uses_prior: bool
    checker: Optional[str] = None
    steerable: bool = False  # its prior can be adapted to the scan (steering's "denoising" objective)
    steers_while_sampling: bool = False  # runs the reverse-diffusion loop, which steering's "misfit" objective needs
    resolved_defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> Callable:
        """The method itself: ``run(problem, **options)`` yields its steps and returns samples in the prior's range."""
        return _load(self.function)

    @property
    def check(self) -> Optional[Callable[[dict], None]]:
        """The method's check of its own options, or ``None``."""
        return _load(self.checker) if self.checker else None

    @property
    def defaults(self) -> dict:
        """Every option ``run`` takes (``steps`` and ``t0`` included) and its default."""
        parameters = inspect.signature(self.run).parameters
        return {**{name: p.default for name, p in parameters.items() if name != "problem"}, **self.resolved_defaults}

    def run_default(self, name: str) -> Any:
        """``run``'s own default of option ``name``, before ``resolved_defaults``."""
        return inspect.signature(self.run).parameters[name].default

    @property
    def options(self) -> dict:
        """The options given to ``reconstruct`` as ``**options``, with their defaults (no ``steps``, ``t0``)."""
        return {name: value for name, value in self.defaults.items() if name not in CALL_OPTIONS}

    def takes(self, name: str) -> bool:
        """Whether the method has the option ``name`` (``"steps"``: whether it runs reverse steps)."""
        return name in self.defaults

    def resolve(self, options: Mapping[str, Any]) -> dict:
        """All of ``run``'s options: ``options`` checked, the rest at their defaults.

        A ``steps`` or ``t0`` of ``None`` means "the method's default". An option the method does
        not take is refused (``TypeError`` for an unknown name, ``ValueError`` for ``steps`` or ``t0``
        given to a method without them), and so is a bad value (``ValueError``), before any work.
        """
        given = {name: value for name, value in options.items() if not (name in CALL_OPTIONS and value is None)}
        defaults = self.defaults
        for name in CALL_OPTIONS:
            if name in given and name not in defaults:
                raise ValueError(f"method {self.name!r} takes no {name} (the methods that do: {_takes(name)}); "
                                 f"leave {name} unset")
        unknown = set(given) - set(defaults)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)} for method {self.name!r}; "
                            f"it accepts {sorted(self.options)}")
        values = {**defaults, **given}
        for name, check in _SHARED_CHECKS.items():
            if name in given:
                values[name] = check(given[name])
        if self.check is not None:
            self.check(values)
        return values


def _load(reference: str) -> Callable:
    module, name = reference.split(":")
    return getattr(import_module(f"recon.methods.{module}"), name)


def _takes(option: str) -> str:
    return ", ".join(name for name, method in METHODS.items() if method.takes(option))


#: Every method, by name, in the order the front ends list them.
METHODS: Mapping[str, Method] = MappingProxyType({
    "fbp": Method("fbp", "baselines:fbp", uses_prior=False),
    "tv": Method("tv", "baselines:tv", uses_prior=False, checker="baselines:check_options"),
    "ccdf": Method("ccdf", "ccdf:ccdf", uses_prior=True, checker="diffusion:check_options",
                   resolved_defaults={"t0": "auto"}, steerable=True, steers_while_sampling=True),
    "diffusion": Method("diffusion", "diffusion:diffusion", uses_prior=True, checker="diffusion:check_options",
                        steerable=True, steers_while_sampling=True),
    "genreg": Method("genreg", "genreg:genreg", uses_prior=True, checker="genreg:check_options",
                     resolved_defaults={"lambda_reg": "auto", "alpha": "auto", "beta": "auto",
                                        "generator_sigma_max": "auto"}, steerable=True),
})
#: The method names, in order.
METHOD_NAMES = tuple(METHODS)
#: Methods that need a prior and give K different samples; the others are deterministic.
PRIOR_METHODS = frozenset(name for name, method in METHODS.items() if method.uses_prior)
#: Methods whose prior can be steered (adapted to the scan) and chosen by self-validation.
STEERABLE_METHODS = frozenset(name for name, method in METHODS.items() if method.steerable)
#: ``adapt`` values that mean "never adapt" / "let the held-out data decide" / "always adapt" (steering.py).
ADAPT_MODES = ("off", "auto", "on")
#: What steering fits the adapters to (``steering.AdaptOptions.objective``); the first is the default.
ADAPT_OBJECTIVES = ("denoising", "misfit")


def check_prior_use(method: str, prior) -> None:
    """A prior given to a method that uses none is refused, not ignored: the user asked for it. One check
    for every front end (the API, ``recon reconstruct``, batch settings, the viewer)."""
    if prior is not None and method in METHODS and method not in PRIOR_METHODS:
        raise ValueError(f"{method!r} uses no prior; leave the prior unset or choose one of "
                         f"{', '.join(m for m in METHOD_NAMES if m in PRIOR_METHODS)}")


def get_method(name) -> Method:
    """The record of method ``name``, or ``ValueError`` listing the known ones."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]
