"""The ``recon`` command: demo, reconstruct, batch, simulate, export, train, view.

Each area of the package registers its own subcommands (``recon/<area>/commands.py`` has
``register(app)``), so this file only assembles them. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    name="recon",
    help="Reconstruct CT, MRI and super-resolution images with diffusion priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_VERBOSE = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from recon import __version__

        typer.echo(f"diffrecon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging and tracebacks."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _VERBOSE["on"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _register_all() -> None:
    from recon.batch import commands as batch_commands
    from recon.io import commands as io_commands
    from recon.methods import commands as method_commands
    from recon.priors import commands as prior_commands
    from recon.viewer import commands as viewer_commands

    for module in (method_commands, batch_commands, io_commands, prior_commands, viewer_commands):
        module.register(app)


_register_all()


def main() -> None:
    """Run the ``recon`` command. User errors exit 2 with a message (each command maps its own); anything
    else that escapes (a full disk, a bug) prints one line and exits 1; ``-v`` shows its traceback."""
    try:
        app()
    except Exception as err:  # noqa: BLE001 - the last resort: never a bare traceback without -v
        if _VERBOSE["on"]:
            raise
        typer.echo(f"error: {type(err).__name__}: {err} (run with -v for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
