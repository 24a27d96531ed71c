"""`reconstruct`'s arguments checked before any work: options, device, measurement, operator, prior, neighbours.

Everything that can be wrong with the inputs fails here with its name (no operator application beyond
shape inference, no network evaluation); ``recon batch`` and the viewer run the same checks before their
first slice.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os

import numpy as np
import torch

from operators.base import ReconOperator
from operators.foreign import as_operator
from recon.methods.checks import check_number, check_positive_int
from recon.methods.denoiser import check_precision
from recon.methods.registry import get_method
from recon.operator_kinds import default_prior

__all__ = ["COMMON_OPTIONS", "CALIBRATION_SPLITS", "method_options", "split_options", "check_method_options",
           "resolve_device", "check_neighbours", "check_physics", "module_on", "physics_on", "as_measurement",
           "candidate_priors", "batch_size", "resolve_prior", "check_prior_fits"]

#: Options handled by `reconstruct` for every method, with their defaults.
COMMON_OPTIONS = {
    "intensity_range": "auto",  # "auto" (percentiles of A_dagger(y), lo at the operator's intensity_floor), (lo, hi), or None for identity
    "noise_sigma": None,  # measurement noise std in y's units; None: from physics.noise_model (sigma, or LogPoissonNoise and y), else 0
    "init": "fbp",  # "fbp" | "tv" | callable(y, physics) | array/tensor in y's image units | Result
    "chunk_size": None,  # samples per network call; None: all K at once on CUDA, batching.samples_per_call on the CPU
    "precision": "auto",  # network arithmetic: "auto" (bfloat16 for CPU inference where native), "float32", "bfloat16"
    "cg_iterations": 5,  # CG iterations of the data-consistency step where no closed form exists
    "use_project": True,  # use physics.project when the operator has one
    "t0_margin": None,  # auto t0: sigma(t0) = margin * estimated error; None: ccdf.default_margin (k / measurements per unknown: k = 2 within [4, 32] for exact projections, 0.09 within [0.1, 1.2] for CG)
    "calibration_splits": None,  # held-out splits whose shared-error ratios are averaged for the std scale; None: CALIBRATION_SPLITS
}

#: Held-out splits a slice calibrates its std on, where no other slices of its volume do (``neighbours``),
#: per method (default 1). genreg's restarts spread little, so one split's ratio scatters most: on its
#: tuning volumes one split's std covered 65-100 % of the error per slice, the mean over four 88-100 %
#: (docs/steering.md). Each more split costs a 2-sample run on its fit data.
CALIBRATION_SPLITS = {"genreg": 4}


def method_options(method: str) -> dict:
    """The options ``method`` accepts (beyond ``steps`` and ``t0``) and their defaults."""
    return get_method(method).options


def split_options(method: str, options: dict, steps=None, t0=None) -> tuple[dict, dict]:
    """``(common, specific)``: the common options and all of the method's (``steps``, ``t0`` included
    where it takes them), defaults filled in, every name and value checked."""
    record = get_method(method)
    unknown = set(options) - set(record.options) - set(COMMON_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for method {method!r}; "
            f"it accepts {sorted(record.options)} and the common options {sorted(COMMON_OPTIONS)}"
        )
    common = {**COMMON_OPTIONS, **{k: v for k, v in options.items() if k in COMMON_OPTIONS}}
    specific = record.resolve({"steps": steps, "t0": t0, **{k: v for k, v in options.items() if k not in COMMON_OPTIONS}})
    if common["chunk_size"] is not None:
        check_positive_int("chunk_size", common["chunk_size"])
    check_positive_int("cg_iterations", common["cg_iterations"])
    check_precision(common["precision"])
    rng = common["intensity_range"]
    expected = f"intensity_range must be 'auto', None or (lo, hi) with lo < hi, got {rng!r}"
    if isinstance(rng, str):
        if rng != "auto":
            raise ValueError(expected)
    elif rng is not None:
        try:  # a tuple, list, array or tensor of two numbers -> a tuple of floats
            values = tuple(float(v) for v in np.asarray(rng.detach().cpu() if torch.is_tensor(rng) else rng).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError(expected) from None
        if np.ndim(rng) != 1 or len(values) != 2 or not values[1] > values[0] or not all(math.isfinite(v) for v in values):
            raise ValueError(expected)
        common["intensity_range"] = values
    init = common["init"]
    if (isinstance(init, str) and init not in ("fbp", "tv")) or init is None:
        raise ValueError(f"init must be 'fbp', 'tv', a callable, an array or a Result; got {init!r}")
    if common["noise_sigma"] is not None:
        common["noise_sigma"] = check_number("noise_sigma", common["noise_sigma"], 0.0)
    if common["t0_margin"] is not None:
        common["t0_margin"] = check_number("t0_margin", common["t0_margin"], 0.0, low_inclusive=False)
    if common["calibration_splits"] is None:
        common["calibration_splits"] = CALIBRATION_SPLITS.get(method, 1)
    check_positive_int("calibration_splits", common["calibration_splits"])
    if not isinstance(common["use_project"], (bool, np.bool_)):
        raise ValueError(f"use_project must be True or False, got {common['use_project']!r}")
    return common, specific


def check_method_options(method: str, options: dict, steps=None, t0=None) -> None:
    """Names and values of ``reconstruct``'s ``**options`` (and ``steps``, ``t0``) for ``method``, checked
    without running anything."""
    split_options(method, dict(options), steps, t0)


def resolve_device(device) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU; ``ValueError`` for a device that is not here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(expected) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(expected)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r}: torch sees {count} CUDA GPU(s) here" + ("" if count else "; use 'cpu'"))
    return resolved


def check_neighbours(neighbours, physics, device, adapt_options, used: bool) -> list:
    """``neighbours`` (other slices) as ``(measurement, operator, noise_sigma)``: an item is a measurement
    of ``physics`` (``noise_sigma`` None: the run's) or a tuple ``(y, physics)`` / ``(y, physics, noise_sigma)``
    of a slice with its own operator. Refused where the run neither trains adapters nor calibrates its
    std on held-out data (``used`` False). [] for None."""
    if neighbours is None:
        return []
    if isinstance(neighbours, (str, bytes, np.ndarray)) or torch.is_tensor(neighbours):
        raise TypeError("neighbours must be a list of measurements (other slices), one per slice")
    try:
        items = list(neighbours)
    except TypeError:
        raise TypeError(f"neighbours must be a list of measurements, got {type(neighbours).__name__}") from None
    if not used:
        raise ValueError("neighbours train steering's adapters or calibrate the volume's std, and this run does "
                         "neither (a choice= is given, the method uses no prior, or neither steering nor "
                         "calibrate='auto' with n_samples >= 2 is on; adapt='auto' is off for a prior without "
                         "convolutions to adapt): leave neighbours unset")
    if adapt_options is not None and adapt_options.objective != "denoising":
        raise ValueError(f"neighbours: the {adapt_options.objective!r} objective trains on this slice's data alone; "
                         "use the default 'denoising' objective")
    checked = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and not 2 <= len(item) <= 3:
            raise ValueError(f"neighbours[{i}]: a tuple must be (y, physics) or (y, physics, noise_sigma), "
                             f"got {len(item)} items")
        measurement, operator, sigma = (item + (None,))[:3] if isinstance(item, tuple) else (item, None, None)
        try:
            other = checked_slice(measurement, operator, physics, device)
            if sigma is not None:
                check_number("noise_sigma", sigma, 0.0)
        except (TypeError, ValueError) as err:
            raise type(err)(f"neighbours[{i}]: {err}") from None
        checked.append((other, operator, None if sigma is None else float(sigma)))
    return checked


def checked_slice(measurement, operator, physics, device) -> torch.Tensor:
    """Another slice of ``physics``'s volume as :func:`as_measurement` gives it, measured by ``operator``
    (None: by ``physics`` itself, which is on ``device`` already), whose images must be ``physics``'s."""
    if operator is None:
        other = as_measurement(measurement, physics, device)
        physics.check_measurement(other)
        return other
    check_physics(operator)
    moved = physics_on(operator, device)
    other = as_measurement(measurement, moved, device)
    own = as_operator(moved, other)
    own.check_measurement(other)
    if tuple(own.img_shape) != tuple(physics.img_shape):
        raise ValueError(f"its operator's images are {tuple(own.img_shape)}, this slice's {tuple(physics.img_shape)}")
    return other


def check_physics(physics) -> None:
    """An operator has ``A``, ``A_adjoint`` and ``A_dagger`` (deepinv's ``LinearPhysics``)."""
    missing = [name for name in ("A", "A_adjoint", "A_dagger") if not callable(getattr(physics, name, None))]
    if missing:
        raise TypeError(f"physics must be a deepinv LinearPhysics (an operators.* instance), got "
                        f"{type(physics).__name__} {physics!r:.60} without {', '.join(missing)}")


def module_on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` if it lives on ``device``, else a moved deep copy: the caller's object never changes."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    here = tensor.device if tensor is not None else torch.device("cpu")
    index = torch.cuda.current_device() if device.type == "cuda" and device.index is None else device.index
    if here.type == device.type and (here.index or 0) == (index or 0):
        return module
    return copy.deepcopy(module).to(device)


def physics_on(physics, device: torch.device):
    """``physics`` on ``device`` (see :func:`module_on`)."""
    if not isinstance(physics, torch.nn.Module):
        return physics
    moved = module_on(physics, device)
    if moved is not physics and getattr(moved, "_auto_grad_adjoint_fn", None) is not None:
        moved._auto_grad_adjoint_fn = None  # deepinv 0.5 caches its autograd adjoint on the old device
    return moved


def as_measurement(y, physics, device) -> torch.Tensor:
    """``y`` as a float tensor with a batch axis of one, finite, accepted by the operator."""
    if isinstance(y, np.ndarray):
        if np.iscomplexobj(y):
            raise TypeError("complex y: pass k-space as real and imaginary channels (deepinv's convention), not a complex array")
        if not np.issubdtype(y.dtype, np.number):
            raise TypeError(f"y must hold numbers, got an array of dtype {y.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(y)).reshape(y.shape)  # ascontiguousarray makes 0-d 1-d
    if not torch.is_tensor(y):
        raise TypeError(f"y must be a torch.Tensor or numpy array, got {type(y).__name__}")
    if y.is_complex():
        raise TypeError("complex y: pass k-space as real and imaginary channels (deepinv's convention)")
    if y.dtype == torch.bool:
        raise TypeError("y must hold numbers, got a bool array")
    if y.dim() == 0 or y.numel() == 0:
        raise ValueError(f"y must be a measurement array, got shape {tuple(y.shape)}")
    y = y.detach().to(device=device, dtype=torch.float32)
    expected = physics.measurement_shape if isinstance(physics, ReconOperator) else None  # foreign: (B, ...)
    if expected is not None and tuple(y.shape) == tuple(expected):
        y = y.unsqueeze(0)
    elif expected is None and y.dim() < 4:
        y = y.unsqueeze(0)
    if expected is not None and tuple(y.shape) == tuple(expected)[1:]:  # (angles, detectors) for (1, angles, detectors)
        raise ValueError(f"y has shape {tuple(y.shape)}, the operator measures {tuple(expected)}: add the channel "
                         f"axis (y[None]), or use recon.io.measurement.prepare, which shapes a measurement for its operator")
    if y.shape[0] != 1:
        raise ValueError(f"y must be one measurement (batch of one), got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or Inf values")
    return y


def candidate_priors(device, image_shape, physics) -> dict:
    """``prior="auto"``: every installed built-in prior that fits the operator's images, loaded."""
    from recon.priors.loading import available_builtins, load_prior

    candidates = {}
    for name in available_builtins():
        prior = load_prior(name, device=device)
        try:
            check_prior_fits(prior, image_shape, physics)
        except ValueError:
            continue
        candidates[name] = prior.eval()
    if not candidates:
        raise ValueError(f"prior='auto': no installed built-in prior fits images of shape {image_shape}")
    return candidates


def batch_size(y, physics) -> int:
    """B of a ``(B, *measurement_shape)`` measurement (a foreign deepinv physics: 4-D y), else 1."""
    shape = tuple(getattr(y, "shape", ()))
    if isinstance(physics, ReconOperator):
        expected = physics.measurement_shape
        return shape[0] if len(shape) == len(expected) + 1 and tuple(shape[1:]) == tuple(expected) else 1
    return shape[0] if len(shape) == 4 else 1


def _check_denoiser_call(prior) -> None:
    """A prior is called as ``prior(x, sigma)`` (deepinv's Denoiser): a module or function that cannot take
    two arguments (a bare ``nn.Conv2d``, ``lambda x: x``) fails here, not at the first network call."""
    target = prior.forward if isinstance(prior, torch.nn.Module) else prior
    try:
        inspect.signature(target).bind(None, None)
    except TypeError:
        raise TypeError(f"prior must be called as prior(x, sigma) like a deepinv Denoiser; {type(prior).__name__} "
                        "does not take two arguments") from None
    except ValueError:  # a builtin without a signature: left to the call
        pass


def resolve_prior(prior, device, physics):
    """The prior to run, on ``device`` in eval mode: the operator's default for None, loaded for a name or a
    path, a moved copy of a module that lives elsewhere (the caller's object never moves)."""
    if prior is None:
        prior = default_prior(physics)
    if isinstance(prior, (str, os.PathLike)):
        from recon.priors import load_prior

        prior = load_prior(prior, device=device)
    if not callable(prior):
        raise TypeError(f"prior must be a name, a path or a Prior (deepinv Denoiser), got {type(prior).__name__}")
    _check_denoiser_call(prior)
    if isinstance(prior, torch.nn.Module):
        prior = module_on(prior, device).eval()  # a copy when it must move; eval mode is set in place
    return prior


def check_prior_fits(prior, image_shape, physics) -> None:
    """The prior takes the operator's images: as many channels, or one for complex images (real and
    imaginary parts denoised as two images), and 2-D images (a volume's slices are reconstructed one by one)."""
    if len(image_shape) != 3:
        raise ValueError(f"the operator's images have shape {tuple(image_shape)}, but a prior denoises 2-D images "
                         "(C, H, W): reconstruct a volume slice by slice (recon batch does), with a measurement of "
                         "shape (1, *measurement_shape) per slice")
    channels = image_shape[0]
    prior_channels = int(getattr(prior, "channels", channels))
    complex_fold = physics.complex_images and channels == 2 and prior_channels == 1
    if prior_channels != channels and not complex_fold:
        raise ValueError(
            f"prior has {prior_channels} channel(s) but the operator's images have {channels} "
            f"(image shape {image_shape}); use a prior trained on {channels}-channel images"
        )
