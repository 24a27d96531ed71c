"""``recon`` itself: the version, and every area's subcommands registered."""

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from typer.testing import CliRunner

import recon
from recon.cli import app


def test_version_is_the_package_version():
    run = CliRunner().invoke(app, ["--version"])
    assert run.exit_code == 0
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert run.output.strip() == f"diffrecon {recon.__version__}" == f"diffrecon {declared}"


def test_the_commands_are_listed_in_help():
    run = CliRunner().invoke(app, ["--help"])
    for command in ("reconstruct", "batch", "simulate", "export", "demo"):
        assert command in run.output
