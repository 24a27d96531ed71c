"""``recon reconstruct``: one measurement file and operator flags in, one result file out.

Kept modest on purpose: whole studies go through ``recon batch``. The measurement is a ``.npy`` array
or a dataset of an ``.h5`` file; the operator is described by flags.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def load_measurement(path: Path, dataset: str = "y"):
    """A measurement array from ``.npy`` or from dataset ``dataset`` of an HDF5 file."""
    import numpy as np

    if not path.is_file():  # a FIFO would block np.load forever
        raise typer.BadParameter(f"{path} does not exist or is not a file")
    if path.suffix not in (".npy", ".h5", ".hdf5"):
        raise typer.BadParameter(f"measurement must be .npy or .h5, got {path.suffix!r}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        import h5py

        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise typer.BadParameter(f"{path} has no dataset {dataset!r}; it has {sorted(f.keys())}")
            if not isinstance(f[dataset], h5py.Dataset):
                raise typer.BadParameter(f"{path}: {dataset!r} is a {type(f[dataset]).__name__}, not a dataset")
            return f[dataset][()]
    except (OSError, ValueError, KeyError) as err:  # not an array file, damaged, pickled objects
        raise typer.BadParameter(f"cannot read {path}: {err}") from err


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output that exists (without ``--overwrite``), is a folder, or lies in a folder that cannot be written."""
    import os

    if path.is_dir() or (path.exists() and not overwrite):
        raise typer.BadParameter(f"{path} exists{'' if path.is_dir() else '; pass --overwrite to replace it'}",
                                 param_hint="--output")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write into {folder}: it does not exist or is not writable", param_hint="--output")


def build_operator(kind: str, measurement_shape, size: Optional[int], angles: int, acceleration: int,
                   center_fraction: float, factor: int, mask_seed: int, noise_sigma: float):
    """The operator for ``kind`` ("ct", "mri", "sr") matching a measurement of ``measurement_shape``."""
    import operators

    from recon.methods.checks import check_number

    if len(measurement_shape) < 2:
        raise typer.BadParameter(f"the measurement should be an image-like array, has shape {tuple(measurement_shape)}")
    noise_sigma = check_number("--noise-sigma", noise_sigma, 0.0)
    spatial = tuple(int(s) for s in measurement_shape[-2:])
    if kind == "ct":
        if size is None:
            raise typer.BadParameter("--size (image size in pixels) is required for CT")
        if spatial[0] != angles:
            raise typer.BadParameter(f"the sinogram has {spatial[0]} angles but --angles is {angles}")
        op = operators.ParallelBeamCT(image_size=size, n_angles=angles)
    elif kind == "mri":
        op = operators.CartesianMRI(image_size=spatial, acceleration=acceleration, center_fraction=center_fraction, seed=mask_seed)
    elif kind == "sr":
        op = operators.SuperResolution(image_size=(spatial[0] * factor, spatial[1] * factor), factor=factor)
    else:
        raise typer.BadParameter(f"--operator must be ct, mri or sr, got {kind!r}")
    if noise_sigma > 0:
        import deepinv

        op.noise_model = deepinv.physics.GaussianNoise(sigma=noise_sigma)
    return op


def register(app) -> None:
    """Add ``recon reconstruct`` to the typer ``app``."""

    @app.command("reconstruct")
    def reconstruct_command(
        measurement: Path = typer.Argument(..., help="Measurement: .npy array or .h5 file (see --dataset)."),
        output: Path = typer.Option(..., "--output", "-o", help="Result file to write (.h5)."),
        operator: str = typer.Option("ct", help="Operator: ct (parallel beam), mri (Cartesian), sr."),
        method: str = typer.Option("ccdf", help="fbp, tv, ccdf, diffusion or genreg."),
        prior: str = typer.Option("ct", help="Built-in prior name or weights path."),
        samples: int = typer.Option(8, help="Posterior samples K."),
        steps: Optional[int] = typer.Option(None, help="Reverse steps (default: the method's)."),
        t0: str = typer.Option("auto", help="CCDF start time in (0, 1], or 'auto'."),
        seed: int = typer.Option(0, help="Random seed."),
        device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
        dataset: str = typer.Option("y", help="Dataset name inside an .h5 measurement."),
        size: Optional[int] = typer.Option(None, help="CT: image size in pixels."),
        angles: int = typer.Option(30, help="CT: number of projection angles over [0, pi)."),
        acceleration: int = typer.Option(4, help="MRI: undersampling factor of the Cartesian mask."),
        center_fraction: float = typer.Option(0.08, help="MRI: fully sampled centre fraction."),
        mask_seed: int = typer.Option(0, help="MRI: seed of the random mask (must match acquisition)."),
        factor: int = typer.Option(4, help="SR: downsampling factor."),
        noise_sigma: float = typer.Option(0.0, help="Gaussian measurement noise std in y's units."),
        overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    ) -> None:
        """Reconstruct one measurement and write a result file (mean, std, samples, metadata)."""
        import numpy as np

        from recon.methods import reconstruct
        from recon.progress import tqdm_callback

        check_output(output, overwrite)  # before the work, not after it
        y = load_measurement(measurement, dataset)
        try:
            t0_value = t0 if t0 == "auto" else float(t0)
        except ValueError:
            raise typer.BadParameter(f"expected 'auto' or a number in (0, 1], got {t0!r}", param_hint="--t0") from None
        try:
            physics = build_operator(operator, np.shape(y), size, angles, acceleration, center_fraction, factor,
                                     mask_seed, noise_sigma)
            result = reconstruct(y, physics, method=method, prior=prior, n_samples=samples, steps=steps, t0=t0_value,
                                 seed=seed, device=device, callback=tqdm_callback(method))
        except (ValueError, TypeError) as err:
            raise typer.BadParameter(str(err)) from err
        path = result.save(output, overwrite=overwrite)
        meta = result.metadata
        typer.echo(f"wrote {path}: {meta['method']}, {meta['n_samples']} sample(s), "
                   f"{meta['n_network_evals']:g} network evals/sample, {meta['wall_time_s']:.1f} s")
