"""CLI subcommands of this area: ``recon batch`` and ``recon demo``; ``recon.cli`` calls ``register(app)``."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import List, Literal, Optional

import typer

from recon.batch.settings import ADAPT_MODES, FORMATS, MASK_PATTERNS, OPERATORS, SELF_VALIDATION
from recon.command_line import parse_option_pairs, parse_t0
from recon.methods.registry import METHOD_NAMES
from recon.methods.volume import AUTO_ADAPT_SAMPLES, AUTO_ADAPT_SLICES
from recon.operator_kinds import DEFAULT_PRIORS

# Fixed lists as types, so a typo exits 2 before anything loads; the help texts list them (a short
# metavar keeps the long lists from squeezing the help column).
MethodName = Literal[METHOD_NAMES]
FormatName = Literal[FORMATS]
OperatorName = Literal[OPERATORS]
MaskPattern = Literal[MASK_PATTERNS]
AdaptMode = Literal[ADAPT_MODES]
SelfValidation = Literal[SELF_VALIDATION]
BUILTIN_PRIORS = ", ".join(dict.fromkeys(DEFAULT_PRIORS.values()))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops at once, keeps what is finished, and says so."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _stop_on_sigterm():
    def stop(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_t0(value: Optional[str]):
    try:
        return parse_t0(value)
    except ValueError as err:
        raise ValueError(f"setting 't0': {err}") from None


def resume_hint(overwrite: bool, config) -> str:
    """How to resume an interrupted run: the same command, except that ``--overwrite`` (or a config's
    ``overwrite = true``) would start its outputs again and throw the finished slices away."""
    if overwrite:
        return "run it again without --overwrite to resume (with it, the outputs start again)"
    hint = "run the same command again to resume (only unfinished slices are computed)"
    if config:
        hint += "; if the config sets overwrite = true, take it out first: it starts the outputs again"
    return hint


def register(app) -> None:
    """Add ``batch`` and ``demo`` to the typer ``app``."""

    @app.command("batch")
    def batch(
        inputs: List[Path] = typer.Argument(..., help="HDF5 inputs (native, fastMRI or LoDoPaB-CT layout)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: one <input>.h5 per input, plus the log."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML settings file (flags override it)."),
        method: Optional[MethodName] = typer.Option(None, metavar="METHOD",
                                                    help=f"{', '.join(METHOD_NAMES)} (default ccdf)."),
        prior: Optional[str] = typer.Option(None, help=f"Built-in prior ({BUILTIN_PRIORS}) or weights path "
                                                       "(default: by modality)."),
        steps: Optional[int] = typer.Option(None, help="Reverse steps per sample (default: the method's)."),
        samples: Optional[int] = typer.Option(None, help="Posterior samples per slice."),
        t0: Optional[str] = typer.Option(None, help="CCDF start time: 'auto', 'validate' (checked on held-out data, once per file) or a number in (0, 1]."),
        seed: Optional[int] = typer.Option(None, help="Base seed; each slice's seed derives from it."),
        option: Optional[List[str]] = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
        save_samples: Optional[bool] = typer.Option(None, "--save-samples/--no-save-samples", help="Store the samples."),
        adapt: Optional[AdaptMode] = typer.Option(None, metavar="MODE", help="Steering of ccdf, diffusion and genreg, trained "
                                                  "once per file: off, auto (kept where held-out data say it helps) or on. "
                                                  f"Default: auto for ccdf over files of {AUTO_ADAPT_SLICES} slices or more with {AUTO_ADAPT_SAMPLES} "
                                                  "samples or more and one self-validation per file, else off."),
        self_validation: Optional[SelfValidation] = typer.Option(
            None, "--self-validation", metavar="SCOPE", help="volume (default): one self-validation per file, on its "
            "middle slice, shared by every slice; slice: each slice its own."),
        fmt: Optional[FormatName] = typer.Option(None, "--format", metavar="FORMAT",
                                                 help=f"{', '.join(FORMATS)} (default auto)."),
        operator: Optional[OperatorName] = typer.Option(None, metavar="KIND", help=f"{', '.join(OPERATORS)}: for "
                                                        "native files without an 'operator' attribute."),
        n_angles: Optional[int] = typer.Option(None, help="CT angles (when the file does not say)."),
        n_detectors: Optional[int] = typer.Option(None, help="CT detector bins (when the file does not say)."),
        source_distance: Optional[float] = typer.Option(None, help="Fan-beam source distance, pixels."),
        detector_distance: Optional[float] = typer.Option(None, help="Fan-beam detector distance, pixels."),
        acceleration: Optional[float] = typer.Option(None, help="MRI undersampling for files without a mask."),
        center_fraction: Optional[float] = typer.Option(None, help="MRI fully sampled centre fraction."),
        mask_pattern: Optional[MaskPattern] = typer.Option(None, metavar="PATTERN",
                                                           help=f"MRI mask: {', '.join(MASK_PATTERNS)}."),
        factor: Optional[int] = typer.Option(None, help="Super-resolution factor (when the file does not say)."),
        noise_sigma: Optional[float] = typer.Option(None, help="Measurement noise std, overrides the file's."),
        workers: Optional[int] = typer.Option(None, help="Start a local Dask cluster with N workers."),
        scheduler: Optional[str] = typer.Option(None, help="Join the Dask cluster at this address."),
        device: Optional[str] = typer.Option(None, help="auto (default), cpu or cuda[:N]."),
        threads: Optional[int] = typer.Option(None, help="Torch threads per CPU task (default 1; 0: torch's)."),
        checkpoint_seconds: Optional[float] = typer.Option(None, help="Re-assemble unfinished outputs this often."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs from earlier runs."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print resolved settings and the work list; do nothing."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Default: when a terminal."),
    ) -> None:
        """Reconstruct every slice of HDF5 studies; resumable; runs on Dask with --workers/--scheduler."""
        from recon.batch.runner import dry_run_text, run

        try:
            with _stop_on_sigterm():
                summary = run(
                    [str(p) for p in inputs], str(out), config=str(config) if config else None, method=method,
                    prior=prior, steps=steps, samples=samples, t0=_parse_t0(t0), seed=seed,
                    options=parse_option_pairs(option), save_samples=save_samples, adapt=adapt, self_validation=self_validation, format=fmt, operator=operator,
                    n_angles=n_angles, n_detectors=n_detectors, source_distance=source_distance,
                    detector_distance=detector_distance, acceleration=acceleration, center_fraction=center_fraction,
                    mask_pattern=mask_pattern, factor=factor, noise_sigma=noise_sigma, workers=workers,
                    scheduler=scheduler, device=device, threads=threads, checkpoint_seconds=checkpoint_seconds,
                    overwrite=overwrite or None, dry_run=dry_run or None, progress=progress,
                )
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            done = getattr(stop, "summary", None)
            typer.echo(f"\ninterrupted by {signal.Signals(signum).name}: "
                       + (done.text() if done is not None else "before any slice finished")
                       + f"\nfinished slices are kept and the outputs are readable; {resume_hint(overwrite, config)}",
                       err=True)
            raise typer.Exit(128 + signum) from None
        if summary.dry_run:
            typer.echo(dry_run_text(summary))
            return
        typer.echo(summary.text())
        if not summary.ok:
            raise typer.Exit(1)

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Folder for the dataset, outputs, figure."),
        method: MethodName = typer.Option("ccdf", metavar="METHOD",
                                          help=f"Method compared with FBP: {', '.join(METHOD_NAMES)}."),
        n_images: int = typer.Option(4, help="Held-out CT images in the example dataset."),
        size: int = typer.Option(128, help="Image size in pixels (at least 16)."),
        n_angles: int = typer.Option(30, help="Sparse-view angles."),
        steps: Optional[int] = typer.Option(None, help="Reverse steps (default: the method's)."),
        samples: int = typer.Option(4, help="Posterior samples per slice."),
        workers: int = typer.Option(0, help="Dask workers (0: this process)."),
    ) -> None:
        """Build an example sparse-view CT study from built-in data, reconstruct it, write a figure."""
        from recon.demo import run_demo

        try:
            report = run_demo(str(out), method=method, n_images=n_images, size=size, n_angles=n_angles, steps=steps,
                              samples=samples, workers=workers)
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(report)
