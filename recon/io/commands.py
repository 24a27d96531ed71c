"""CLI subcommands of this area: ``recon simulate`` and ``recon export``; ``recon.cli`` calls ``register(app)``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Literal, Optional

import typer

from recon.batch.settings import MASK_PATTERNS
from recon.io.export import ARRAYS

MaskPattern = Literal[MASK_PATTERNS]
#: An Enum, as a repeatable option's choices cannot be a Literal.
ArrayName = Enum("ArrayName", {name: name for name in ARRAYS}, type=str)
Units = Literal["source", "stored"]


class Modality(str, Enum):
    ct = "ct"
    mri = "mri"
    sr = "sr"


def register(app) -> None:
    """Add ``simulate`` and ``export`` to the typer ``app``."""

    @app.command("simulate")
    def simulate(
        modality: Modality = typer.Argument(..., help="What to simulate: ct (parallel beam), mri (Cartesian) or sr."),
        images: List[Path] = typer.Argument(..., help="DICOM files or folders, NIfTI, PNG/TIFF/JPEG or .npy images."),
        out: Path = typer.Option(..., "--out", "-o", help="Study to write (.h5, the batch's native layout)."),
        n_angles: Optional[int] = typer.Option(None, "--n-angles", help="CT: views over [0, pi) (30)."),
        noise: Optional[float] = typer.Option(None, help="Gaussian noise std as a fraction of the measurement's "
                                                         "RMS (default 0.01)."),
        dose: Optional[float] = typer.Option(None, help="CT: photons per detector bin I0 (Poisson noise instead of "
                                                        "--noise)."),
        acceleration: Optional[float] = typer.Option(None, help="MRI: undersampling factor (4)."),
        center_fraction: Optional[float] = typer.Option(None, help="MRI: fully sampled centre fraction (0.08)."),
        mask_pattern: Optional[MaskPattern] = typer.Option(None, metavar="PATTERN",
                                                           help=f"MRI: {', '.join(MASK_PATTERNS)}."),
        factor: Optional[int] = typer.Option(None, help="SR: downsampling factor 2, 4 or 8 (4)."),
        size: Optional[int] = typer.Option(None, help="Resize every slice to SIZE x SIZE pixels first."),
        seed: int = typer.Option(0, help="Seed of the noise and the MRI mask."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing study file."),
    ) -> None:
        """Simulate measurements of your own images: a study with the ground truth, ready for `recon batch`."""
        from recon.io.simulate import simulate_study

        try:
            path = simulate_study([str(p) for p in images], str(out), modality.value, n_angles=n_angles, noise=noise,
                                  dose=dose, acceleration=acceleration, center_fraction=center_fraction,
                                  mask_pattern=mask_pattern, factor=factor, size=size, seed=seed, overwrite=overwrite)
        except (ValueError, FileExistsError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        import h5py

        with h5py.File(path, "r") as f:
            typer.echo(f"wrote {path}: {f['measurement'].shape[0]} slice(s), {f.attrs['description']}")

    @app.command("export", context_settings={"allow_extra_args": True})
    def export(
        context: typer.Context,
        result: Path = typer.Argument(..., help="A result file (recon reconstruct) or batch output (recon batch)."),
        out: Optional[str] = typer.Option(None, "--out", "-o", metavar="PATH", help="OUT.nii[.gz] or OUT.tif (std beside it as "
                                                                     "OUT_std.*), or a folder for DICOM series "
                                                                     "(OUT/mean, OUT/std)."),
        like: Optional[Path] = typer.Option(None, help="Images to take geometry and patient from (default: the "
                                                       "study's, when recon simulate wrote it)."),
        array: Optional[List[ArrayName]] = typer.Option(None, "--array", help="mean or std (repeatable; default "
                                                                              "both)."),
        units: Units = typer.Option("source", help="source (back to the images' units, e.g. HU) or stored."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    ) -> None:
        """Export a result's mean and std to NIfTI, a DICOM series or TIFF."""
        from recon.io.export import ARRAYS, export_result

        second = context.args  # OUT as a second argument: how scripts wrote it before --out (not shown in --help)
        if len(second) > 1 or (second and out is not None):
            typer.echo(f"error: unexpected arguments {second}: give the file or folder to write once, as --out OUT",
                       err=True)
            raise typer.Exit(2)
        out = out if out is not None else (second[0] if second else None)  # a str: typer's Path makes "" of "."
        if out is None:
            typer.echo("error: give the file or folder to write as --out OUT", err=True)
            raise typer.Exit(2)
        try:
            written = export_result(str(result), str(out), like=None if like is None else str(like),
                                    arrays=tuple(a.value for a in array) if array else ARRAYS, units=units,
                                    overwrite=overwrite)
        except (ValueError, FileExistsError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        folders = sorted({str(Path(p).parent) for p in written if p.endswith(".dcm")})
        files = [p for p in written if not p.endswith(".dcm")]
        typer.echo("wrote " + ", ".join(files + [f"{folder}/ (DICOM series)" for folder in folders]))
