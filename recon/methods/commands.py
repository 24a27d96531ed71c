"""``recon reconstruct``: one measurement file and operator flags in, one result file out.

Kept modest on purpose: whole studies go through ``recon batch``. The measurement is a ``.npy`` array,
a dataset of an ``.h5`` file or an image file; the operator is described by flags with the names
``recon batch`` uses. Reading and shaping the measurement is :mod:`recon.io.measurement`'s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Literal, Optional

import typer

from recon.batch.settings import MASK_PATTERNS
from recon.command_line import parse_option_pairs, parse_t0
from recon.methods.registry import METHOD_NAMES, PRIOR_METHODS, STEERABLE_METHODS, check_prior_use
from recon.operator_kinds import DEFAULT_PRIORS, KINDS, SHORT_NAMES

# Fixed lists as types, so a typo exits 2 before anything loads; the help texts list them (a short
# metavar keeps the long lists from squeezing the help column).
MethodName = Literal[METHOD_NAMES]
OperatorName = Literal[(*SHORT_NAMES, *KINDS)]
MaskPattern = Literal[MASK_PATTERNS]
AdaptMode = Literal["off", "auto", "on"]
#: The built-in priors, named in the --prior help (a weights path is accepted too, so no fixed list).
BUILTIN_PRIORS = ", ".join(dict.fromkeys(DEFAULT_PRIORS.values()))
#: ``reconstruct`` arguments that have a flag of their own (or none on the command line): refused as
#: ``--option`` keys, which would otherwise clash with the flag's value.
OWN_FLAGS = {"method": "--method", "prior": "--prior", "n_samples": "--samples", "steps": "--steps", "t0": "--t0",
             "seed": "--seed", "device": "--device", "adapt": "--adapt", "calibrate": "--calibrate/--no-calibrate",
             "lambda_tv": "--lambda-tv", "noise_sigma": "--noise-sigma", "callback": None, "choice": None,
             "neighbours": None}

logger = logging.getLogger(__name__)


def check_output(path: Path, overwrite: bool, inputs=()) -> None:
    """Refuse an output that exists (without ``--overwrite``), is one of ``inputs``, is a folder, lies in a
    folder that cannot be written, or is named as another format (the result is HDF5 whatever its name)."""
    from recon.files import check_hdf5_name, check_new_file

    try:
        check_new_file(path, overwrite, inputs)
        check_hdf5_name(path, "the result", " (`recon export` writes NIfTI, TIFF or DICOM from it)")
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--out") from None


def register(app) -> None:
    """Add ``recon reconstruct`` to the typer ``app``."""

    @app.command("reconstruct")
    def reconstruct_command(
        measurement: str = typer.Argument(..., help="Measurement: .npy, file.h5[:/dataset], or a TIFF/PNG/NIfTI/DICOM "
                                                    "sinogram or image."),
        output: Path = typer.Option(..., "--out", "-o", help="Result file to write (.h5)."),
        operator: OperatorName = typer.Option("ct", metavar="OPERATOR",
                                              help="ct (parallel beam), fan (fan beam), mri (Cartesian) or sr; or the "
                                                   "batch names (parallel_beam_ct, fan_beam_ct, cartesian_mri, "
                                                   "super_resolution)."),
        method: MethodName = typer.Option("ccdf", metavar="METHOD", help=", ".join(METHOD_NAMES) + "."),
        prior: Optional[str] = typer.Option(None, help=f"Built-in prior ({BUILTIN_PRIORS}; `recon priors` lists "
                                                       "them) or weights path (default: by modality)."),
        samples: int = typer.Option(8, help="Posterior samples K."),
        steps: Optional[int] = typer.Option(None, help="Reverse steps (default: the method's)."),
        t0: Optional[str] = typer.Option(None, help="CCDF start time in (0, 1], 'auto' (default) or 'validate' (auto scaled by held-out data)."),
        seed: int = typer.Option(0, help="Random seed."),
        device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
        dataset: Optional[str] = typer.Option(None, help="Dataset inside an .h5 measurement (default y; or "
                                                         "file.h5:/dataset)."),
        size: Optional[int] = typer.Option(None, help="CT: image size in pixels."),
        n_angles: Optional[int] = typer.Option(None, "--n-angles",
                                               help="CT: number of angles (default: the sinogram's rows), evenly "
                                                    "over [0, pi) (parallel) or [0, 2 pi) (fan)."),
        angles_file: Optional[Path] = typer.Option(None, help="CT: the projection angles, .npy or text, radians."),
        degrees: bool = typer.Option(False, "--degrees", help="CT: --angles-file is in degrees."),
        n_detectors: Optional[int] = typer.Option(None, help="CT: detector bins (checked against the sinogram)."),
        detector_spacing: Optional[float] = typer.Option(None, help="CT: detector bin width in pixels."),
        pixel_size: Optional[float] = typer.Option(None, help="CT: pixel side length; scales the line integrals."),
        source_distance: Optional[float] = typer.Option(None, help="Fan beam: source to centre, pixels."),
        detector_distance: Optional[float] = typer.Option(None, help="Fan beam: centre to detector, pixels."),
        acceleration: Optional[float] = typer.Option(None, help="MRI: undersampling factor of a generated mask "
                                                                "(default: the mask is the columns with data)."),
        center_fraction: Optional[float] = typer.Option(None, help="MRI: fully sampled centre fraction (0.08)."),
        mask_pattern: Optional[MaskPattern] = typer.Option(None, metavar="PATTERN",
                                                           help=f"MRI: {', '.join(MASK_PATTERNS)}."),
        mask_seed: Optional[int] = typer.Option(None, help="MRI: seed of the generated mask (must match acquisition)."),
        mask: Optional[Path] = typer.Option(None, help="MRI: sampling mask file, .npy, text or file.h5:/mask, "
                                                        "(H, W) or (W,)."),
        factor: Optional[int] = typer.Option(None, help="SR: downsampling factor (2, 4, 8; default 4)."),
        noise_sigma: float = typer.Option(0.0, help="Gaussian measurement noise std in y's units (k-space: of the "
                                                     "real and of the imaginary part, each)."),
        adapt: AdaptMode = typer.Option("off", metavar="MODE", help="ccdf, diffusion, genreg: adapt the prior to this scan "
                                        "(off, auto: kept only if it predicts held-out data better, on)."),
        calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                       help="Scale the std map on held-out measurement data (K >= 2)."),
        lambda_tv: Optional[str] = typer.Option(None, help="tv: regularisation weight, or 'auto' (chosen on "
                                                "held-out data; default 0.003)."),
        option: Optional[List[str]] = typer.Option(None, "--option", metavar="KEY=VALUE",
                                                   help="Method option (repeatable), e.g. objective=hard for "
                                                        "genreg; docs/methods.md lists each method's."),
        overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    ) -> None:
        """Reconstruct one measurement and write a result file (mean, std, samples, metadata)."""
        from recon.io.measurement import prepare_geometry, read_measurement, split_dataset
        from recon.methods import reconstruct
        from recon.methods.checks import check_number
        from recon.operator_kinds import default_prior, operator_kind
        from recon.progress import tqdm_callback

        try:
            source = split_dataset(measurement, dataset)[0]
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="MEASUREMENT") from None
        mask_file = None if mask is None else split_dataset(str(mask))[0]
        check_output(output, overwrite, inputs=(source, angles_file, mask_file))  # before the work, not after it
        try:
            check_prior_use(method, prior)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--prior") from None
        if adapt != "off" and method not in STEERABLE_METHODS:
            raise typer.BadParameter(f"only {', '.join(sorted(STEERABLE_METHODS))} adapt the prior, not {method!r}; "
                                     "leave --adapt unset", param_hint="--adapt")
        try:
            t0_value = parse_t0(t0)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--t0") from None
        options = _method_options(method, option, lambda_tv, steps, t0_value)
        try:
            kind = operator_kind(operator)
            y = read_measurement(measurement, dataset)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="MEASUREMENT") from None
        try:
            y, description, physics = prepare_geometry(
                y, operator, size=size, n_angles=n_angles, angles=angles_file, degrees=degrees, n_detectors=n_detectors,
                detector_spacing=detector_spacing, pixel_size=pixel_size, source_distance=source_distance,
                detector_distance=detector_distance, acceleration=acceleration, center_fraction=center_fraction,
                mask_pattern=mask_pattern, mask_seed=mask_seed, mask=mask, factor=factor)
            if check_number("--noise-sigma", noise_sigma, 0.0) > 0:
                import deepinv

                physics.noise_model = deepinv.physics.GaussianNoise(sigma=noise_sigma)
            if prior is None and method in PRIOR_METHODS:
                prior = default_prior(kind)
                logger.info("prior: %s (the %s operator's default; --prior to choose)", prior, kind)
            result = reconstruct(y, physics, method=method, prior=prior, n_samples=samples, steps=steps, t0=t0_value,
                                 seed=seed, device=device, callback=tqdm_callback(method),
                                 adapt=adapt,
                                 calibrate="auto" if calibrate else False, **options)
        except (ValueError, TypeError) as err:
            raise typer.BadParameter(str(err)) from err
        except FileNotFoundError as err:  # a file named on the command line (a --prior checkpoint) that is not there
            raise typer.BadParameter(str(err)) from None
        result.metadata["operator_description"] = description.to_dict()
        path = _save(result, output, overwrite)
        meta = result.metadata
        typer.echo(f"wrote {path}: {meta['method']}, {meta['n_samples']} sample(s), "
                   f"{meta['n_network_evals']:g} network evals/sample, {meta['wall_time_s']:.1f} s")
        validation = meta.get("self_validation")
        if validation and validation.get("heldout_relative_rms") is not None:
            typer.echo(f"held-out data: relative RMS misfit {validation['heldout_relative_rms']:.4f} "
                       f"({validation['chosen']}); std scale {meta.get('std_scale') or 1:.2f}")


def _save(result, output: Path, overwrite: bool) -> str:
    """Save at ``output``; if a file appeared there during the work, beside it under a free name, with a
    warning: the finished reconstruction is neither lost nor written over the newcomer."""
    try:
        return result.save(output, overwrite=overwrite)
    except FileExistsError:
        stem, suffix = os.path.splitext(os.fspath(output))
        number = 1
        while os.path.lexists(f"{stem}-{number}{suffix}"):
            number += 1
        path = result.save(f"{stem}-{number}{suffix}")
        typer.echo(f"warning: {output} appeared while reconstructing and was left as it is; the result is in {path}",
                   err=True)
        return path


def _method_options(method: str, pairs, lambda_tv: Optional[str], steps, t0) -> dict:
    """``reconstruct``'s ``**options`` from ``--option`` pairs and ``--lambda-tv``, names and values checked
    for ``method`` before any file is read; each error names the flag that caused it."""
    from recon.methods.arguments import check_method_options

    for flag, given in (("--steps", {"steps": steps}), ("--t0", {"t0": t0})):
        try:
            check_method_options(method, {}, **given)
        except (TypeError, ValueError) as err:
            raise typer.BadParameter(str(err), param_hint=flag) from None
    options = {}
    if lambda_tv is not None:
        try:
            options["lambda_tv"] = lambda_tv if lambda_tv == "auto" else float(lambda_tv)
        except ValueError:
            raise typer.BadParameter(f"expected 'auto' or a number, got {lambda_tv!r}", param_hint="--lambda-tv") from None
        try:
            check_method_options(method, options)
        except (TypeError, ValueError) as err:
            raise typer.BadParameter(str(err), param_hint="--lambda-tv") from None
    try:
        given = parse_option_pairs(pairs) or {}
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    for key, value in given.items():
        if key in OWN_FLAGS:
            flag = OWN_FLAGS[key]
            if flag:
                message = f"{key} is set by {flag}, not by --option"
            else:
                message = f"{key} is not available on the command line" + (
                    "" if key == "callback" else f" (recon batch shares a volume's {key} between its slices)")
            raise typer.BadParameter(message, param_hint="--option")
        if key == "init" and value not in ("fbp", "tv"):  # arrays, callables and Results come from Python only
            raise typer.BadParameter(f"init is 'fbp' or 'tv' on the command line, got {value!r}", param_hint="--option")
    options.update(given)
    try:
        check_method_options(method, options)
    except (TypeError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--option") from None
    return options
