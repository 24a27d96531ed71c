"""CLI subcommands of the priors area: ``recon train`` and ``recon priors``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional, Tuple

import typer

from recon.priors.data import NORMALISATIONS

Normalisation = Literal[NORMALISATIONS]


def train_command(
    data: str = typer.Argument("ct", help="Built-in training data: ct, mri, natural, ct-real or mri-real (ignored "
                                          "with --hdf5)."),
    out: Path = typer.Option(Path("prior.pt"), "--out", "-o", help="Checkpoint to write (and resume from)."),
    steps: Optional[int] = typer.Option(None, help="Total optimisation steps \\[default: 6000, or the resumed run's]."),
    hdf5: Optional[Path] = typer.Option(None, help="Train on images in this HDF5 file instead."),
    key: Optional[str] = typer.Option(None, help="Dataset key inside the HDF5 file."),
    normalise: Optional[Normalisation] = typer.Option(None, metavar="MODE", help="HDF5 intensity normalisation: "
                                                     f"{', '.join(NORMALISATIONS)} \\[default: minmax, or the resumed run's]."),
    size: Optional[int] = typer.Option(None, help="Training patch size, a multiple of 8 \\[default: 64]."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step \\[default: 16]."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate \\[default: 4e-4]; may be changed on resume."),
    widths: Optional[str] = typer.Option(None, help="UNet widths per level, comma separated \\[default: 16,32,64,128]."),
    seed: Optional[int] = typer.Option(None, help="Seed for data and noise: same seed, same run \\[default: 0]."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    name: Optional[str] = typer.Option(None, help="Name stored in the prior's metadata."),
    resume: bool = typer.Option(True, help="Continue from --out if it exists."),
    workers: int = typer.Option(0, help="Processes drawing training batches ahead (same batches for any count)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop with a checkpoint after this long; rerun to resume."),
    init_from: Optional[str] = typer.Option(None, help="Fine-tune: start from this prior (built-in name or checkpoint)."),
    zoom: Optional[Tuple[float, float]] = typer.Option(None, metavar="LOW HIGH", help="Zoom range of the scan views "
                                                       "(mri, ct-real, mri-real) \\[default: the data's own]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints \\[default: 250]."),
    validate_every: Optional[int] = typer.Option(None, help="Steps between validation PSNR reports \\[default: 1000]."),
) -> None:
    """Train a diffusion prior (EDM objective) and write a checkpoint that load_prior reads.

    Options left out take their defaults, or on resume the values saved in the checkpoint.
    """
    from recon.priors.training import train

    options = dict(size=size, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                   validate_every=validate_every, zoom=zoom)
    if widths is not None:
        try:
            options["widths"] = tuple(int(w) for w in widths.split(","))
        except ValueError:
            raise typer.BadParameter(f"--widths must be comma-separated integers, got {widths!r}")
    try:
        path = train(data, out=out, steps=steps, hdf5=hdf5, key=key, normalise=normalise, resume=resume, device=device,
                     name=name, workers=workers, max_minutes=max_minutes, init_from=init_from,
                     **{k: v for k, v in options.items() if v is not None})
    except (ValueError, FileNotFoundError) as err:  # the options and files, checked before training starts
        raise typer.BadParameter(str(err)) from None
    typer.echo(f"wrote {path}")


def priors_command(
    specs: Optional[List[str]] = typer.Argument(None, help="Priors to describe (default: the built-in ones)."),
) -> None:
    """List the built-in priors, or describe the given priors (names, checkpoints, deepinv:<model>@<file>)."""
    from recon.priors.loading import available_builtins, describe, known_specs, load_prior

    if not specs:
        typer.echo("built-in priors installed: " + ", ".join(available_builtins()))
        typer.echo("all spec forms: " + ", ".join(known_specs()) + ", <checkpoint.pt>, <diffusers folder>")
        specs = available_builtins()
    for spec in specs:
        try:
            prior = load_prior(spec)
        except (ValueError, FileNotFoundError) as err:  # an unknown name, a missing or unusable file
            raise typer.BadParameter(str(err), param_hint="SPECS") from None
        typer.echo(f"--- {spec}")
        typer.echo(describe(prior))


def register(app) -> None:
    """Add ``train`` and ``priors`` to the ``recon`` typer app."""
    app.command("train")(train_command)
    app.command("priors")(priors_command)
