"""The ``recon`` command: demo, reconstruct, batch, simulate, export, train, priors, view, completion.

Each area of the package registers its own subcommands (``recon/<area>/commands.py`` has
``register(app)``), so this file only assembles them. Heavy imports happen inside the commands:
``recon --help`` and ``recon <command> --help`` never import torch.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Literal

import typer
from typer.core import TyperGroup

from recon.completion import SHELLS

#: Old spellings that keep working, hidden from ``--help``: one documented name per concept.
HIDDEN_ALIASES = {"--output": "--out", "--angles": "--n-angles"}
#: Root flags that may also be given after the subcommand (``recon batch ... -v``).
ANYWHERE_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def _option_names(command) -> tuple:
    """(every option spelling of ``command``, the spellings that take a value)."""
    names, valued = set(), set()
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option":
            continue
        spellings = set(param.opts) | set(param.secondary_opts)
        names |= spellings
        if not (getattr(param, "is_flag", False) or getattr(param, "count", False)):
            valued |= set(param.opts)
    return names, valued


def normalise_args(group, args: List[str]) -> List[str]:
    """Rewrite a hidden alias to its documented spelling and move ``-v``/``-q`` given after the
    subcommand in front of it, where the root takes them. Option values and anything after ``--``
    are left alone."""
    args = list(args)
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        i += 1
    if i == len(args) or args[i] not in group.commands:
        return args
    command = group.commands[args[i]]
    names, valued = _option_names(command)
    front, rest = args[:i], [args[i]]
    i += 1
    while i < len(args):
        token = args[i]
        if token == "--":
            rest += args[i:]
            break
        name, eq, value = token.partition("=")
        if name in HIDDEN_ALIASES and HIDDEN_ALIASES[name] in names and name not in names:
            name = HIDDEN_ALIASES[name]
            token = name + eq + value
        if token in ANYWHERE_FLAGS and token not in names:
            front.append(token)
        else:
            rest.append(token)
            if name in valued and not eq and i + 1 < len(args):
                rest.append(args[i + 1])
                i += 1
        i += 1
    return front + rest


class RootGroup(TyperGroup):
    """The ``recon`` group: the shared argument rewriting of :func:`normalise_args` before parsing."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, normalise_args(self, args))


app = typer.Typer(
    name="recon",
    cls=RootGroup,
    help="Reconstruct CT, MRI and super-resolution images with diffusion priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_VERBOSE = {"on": False}


def version_text() -> str:
    """diffrecon's version, then python's and the libraries' (``not installed`` where missing)."""
    from recon.versions import library_versions

    versions = library_versions()
    lines = [f"diffrecon {versions.pop('diffrecon')}"]
    lines += [f"  {name} {version or 'not installed'}" for name, version in versions.items()]
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging and tracebacks "
                                                                      "(before or after the command)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors (-v wins)."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and the libraries' versions, and exit.")) -> None:
    _VERBOSE["on"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig, with the level on the terminal's handler too: recon batch
        handler = logging.StreamHandler()  # lowers the package's loggers to INFO for its log file, not for -q
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
        root.addHandler(handler)
        root.setLevel(level)


def _register_all() -> None:
    from recon.batch import commands as batch_commands
    from recon.io import commands as io_commands
    from recon.methods import commands as method_commands
    from recon.priors import commands as prior_commands
    from recon.viewer import commands as viewer_commands

    for module in (method_commands, batch_commands, io_commands, prior_commands, viewer_commands):
        module.register(app)


_register_all()


Shell = Literal[SHELLS]


def completion_command(ctx: typer.Context,
                       shell: Shell = typer.Argument("bash", help="The shell to write the script for.")) -> None:
    """Print a shell completion script: eval "$(recon completion bash)" in ~/.bashrc (zsh: ~/.zshrc)."""
    from recon.completion import script

    root = ctx.find_root()
    typer.echo(script(shell, root.command, root), nl=False)


app.command("completion")(completion_command)


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
