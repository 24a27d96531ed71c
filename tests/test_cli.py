"""``recon`` itself: the version, every area's subcommands registered, a help that loads no torch,
one flag vocabulary, -v/-q anywhere and shell completion."""

import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from typer.testing import CliRunner

import recon
from recon.cli import app, normalise_args
from recon.versions import library_versions

LIBRARIES = ("torch", "deepinv", "astra-toolbox", "numpy", "h5py")


def test_version_is_the_package_version_then_the_libraries():
    run = CliRunner().invoke(app, ["--version"])
    assert run.exit_code == 0
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    lines = run.output.strip().splitlines()
    assert lines[0] == f"diffrecon {recon.__version__}" == f"diffrecon {declared}"
    assert lines[1].split() == ["python", platform.python_version()]
    assert [line.split()[0] for line in lines[2:]] == list(LIBRARIES)


def test_library_versions_come_from_the_installed_metadata(monkeypatch):
    import recon.versions

    versions = library_versions()
    assert list(versions) == ["diffrecon", "python", *LIBRARIES]
    assert versions["diffrecon"] == recon.__version__ and versions["python"] == platform.python_version()
    assert versions["numpy"] == metadata.version("numpy") and versions["h5py"] == metadata.version("h5py")
    monkeypatch.setattr(recon.versions, "LIBRARIES", ("numpy", "no-such-library-xyz"))
    assert library_versions()["no-such-library-xyz"] is None


def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])


def test_help_and_version_load_no_torch():
    """`recon --help` used to take seconds because torch loaded with the commands."""
    code = (
        "import sys\n"
        "import typer\n"
        "from recon.cli import app\n"
        "from recon.versions import library_versions\n"
        "library_versions()\n"
        "names = [''] + list(typer.main.get_command(app).commands)\n"
        "for name in names:\n"
        "    try:\n"
        "        app([name, '--help'] if name else ['--help'], standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('COMMANDS', len(names) - 1)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    run = _run_python(code)
    assert run.returncode == 0, run.stderr
    assert "COMMANDS 9" in run.stdout and "TORCH False" in run.stdout, run.stdout


def test_the_commands_are_listed_in_help():
    run = CliRunner().invoke(app, ["--help"])
    for command in ("reconstruct", "batch", "simulate", "export", "demo"):
        assert command in run.output


def _help(*args):
    """The help with rich's borders and line breaks taken out, so wrapped text reads as one line."""
    return re.sub(r"[│\s]+", " ", CliRunner().invoke(app, [*args, "--help"]).output)


METHODS = "fbp, tv, ccdf, diffusion, genreg"
PATTERNS = "random, equispaced, variable-density"


@pytest.mark.parametrize("command, shown", [
    ("reconstruct", [METHODS, PATTERNS, "ct (parallel beam), fan (fan beam), mri (Cartesian) or sr"]),
    ("batch", [METHODS, PATTERNS, "auto, native, fastmri, lodopab",
               "parallel_beam_ct, fan_beam_ct, cartesian_mri, super_resolution"]),
    ("demo", [METHODS]),
    ("simulate", [PATTERNS, "<ct|mri|sr>"]),
    ("export", ["<list[mean|std]>", "<source|stored>"]),
    ("train", ["none, minmax, percentile, per-image"]),
    ("completion", ["<bash|zsh>"]),
])
def test_fixed_lists_are_listed_in_help(command, shown):
    text = _help(command)
    for choices in shown:
        assert choices in text, text


def test_defaults_written_in_brackets_survive_the_help_markup():
    """rich reads ``[default: 64]`` as a markup tag and drops it unless the bracket is escaped."""
    text = _help("train")
    for default in ("[default: 64]", "[default: 16]", "[default: 4e-4]", "[default: 16,32,64,128]", "[default: 250]"):
        assert default in text, text


def test_a_value_not_in_the_list_exits_2_naming_the_choices(tmp_path):
    for command in (["batch", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o")],
                    ["reconstruct", str(tmp_path / "y.npy"), "--out", str(tmp_path / "r.h5")]):
        for flag, value, expected in (("--method", "ccfd", "'ccdf'"), ("--mask-pattern", "radial", "'equispaced'"),
                                      ("--operator", "pet", "'parallel_beam_ct'")):
            run = CliRunner().invoke(app, [*command, flag, value])
            assert run.exit_code == 2 and expected in run.output and "Traceback" not in run.output, run.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["reconstruct", "batch", "simulate", "demo", "train"])
def test_one_spelling_per_flag_in_help(command):
    text = _help(command)
    assert "--out" in text and "--output" not in text
    if command != "train":
        assert "--n-angles" in text and not any(word.startswith("--angles") and word != "--angles-file"
                                                for word in text.replace("│", " ").split())


def test_old_spellings_and_late_verbosity_flags_are_rewritten_before_parsing():
    import typer

    group = typer.main.get_command(app)
    assert normalise_args(group, ["reconstruct", "y.npy", "--output", "r.h5", "--angles=20", "--angles-file", "a",
                                  "-v"]) == ["-v", "reconstruct", "y.npy", "--out", "r.h5", "--n-angles=20",
                                             "--angles-file", "a"]
    # an option's value and anything after -- are left as they are
    assert normalise_args(group, ["batch", "s.h5", "--prior", "-v", "--out", "o", "-q", "--", "-v"]) == \
        ["-q", "batch", "s.h5", "--prior", "-v", "--out", "o", "--", "-v"]
    # a command without --out keeps --output (and refuses it)
    assert normalise_args(group, ["view", "r.h5", "--output", "y"])[-2] == "--output"
    assert normalise_args(group, ["export", "r.h5", "--output", "y"])[-2] == "--out"


def test_quiet_and_verbose_are_accepted_after_the_command():
    for flags in (["-q"], ["--verbose"], ["-v", "-q"]):
        run = CliRunner().invoke(app, ["completion", "bash", *flags])
        assert run.exit_code == 0, run.output
        run = CliRunner().invoke(app, [*flags, "completion", "bash"])
        assert run.exit_code == 0, run.output


def test_quiet_batch_logs_warnings_only_on_the_terminal_and_everything_in_its_log(tmp_path):
    """recon batch lowers the package's loggers to INFO for recon-batch.log, and -q printed those lines too."""
    from recon.demo import example_images, write_native_ct

    study = write_native_ct(str(tmp_path / "study.h5"), example_images(2, 32)[0], n_angles=20)
    command = [sys.executable, "-m", "recon.cli", "-q", "batch", study, "--out", str(tmp_path / "out"), "--method",
               "ccdf", "--samples", "2", "--steps", "5", "--no-progress"]  # ccdf logs its start (INFO)
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    assert "INFO" not in run.stderr, run.stderr
    assert " INFO " in (tmp_path / "out" / "recon-batch.log").read_text()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_script_names_every_command(shell):
    import typer

    run = CliRunner().invoke(app, ["completion", shell])
    assert run.exit_code == 0, run.output
    commands = list(typer.main.get_command(app).commands)
    assert {"reconstruct", "batch", "simulate", "export", "demo", "train", "priors", "view", "completion"} <= \
        set(commands)
    for command in commands:
        assert f"        {command})" in run.output
    assert "complete -o default -F _recon_complete recon" in run.output
    assert "fbp tv ccdf diffusion genreg" in run.output and "--output" not in run.output


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_completion_completes_commands_options_and_choices(tmp_path):
    script = tmp_path / "recon.bash"
    script.write_text(CliRunner().invoke(app, ["completion", "bash"]).output)
    probe = f"""source {script}
comp() {{
    COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=(); _recon_complete; echo "${{COMPREPLY[*]}}"
}}
comp recon re
comp recon -v batch --method ""
comp recon simulate --out s.h5 ""
comp recon simulate ct ""
comp recon reconstruct --n-
"""
    run = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["reconstruct", "fbp tv ccdf diffusion genreg", "ct mri sr", "",
                                       "--n-angles --n-detectors"]


@pytest.mark.parametrize("flags, message", [
    (["--n-images", "-2"], "--n-images"), (["--n-images", "0"], "--n-images"), (["--samples", "0"], "--samples"),
    (["--steps", "0"], "--steps"), (["--size", "12"], "--size"), (["--workers", "-1"], "--workers"),
])
def test_a_bad_demo_number_exits_2_before_anything_is_written(tmp_path, flags, message):
    """--n-images -2 ran on 6 images (a negative slice), 0 failed in the operator and left an empty folder."""
    out = tmp_path / "demo"
    run = CliRunner().invoke(app, ["demo", "--out", str(out), *flags])
    assert run.exit_code == 2 and message in run.output, run.output
    assert not out.exists()


def test_the_demo_runs_at_a_size_that_is_not_a_multiple_of_8(tmp_path):
    """--size had to be a multiple of 8; the priors pad to their network's multiple and crop back."""
    out = tmp_path / "demo"
    run = CliRunner().invoke(app, ["demo", "--out", str(out), "--size", "36", "--n-images", "1", "--samples", "2",
                                   "--steps", "3", "--n-angles", "20"])
    assert run.exit_code == 0, run.output
    import h5py
    import numpy as np

    with h5py.File(out / "ccdf" / "demo_ct.h5", "r") as f:
        assert f["mean"].shape[-2:] == (36, 36) and np.isfinite(f["psnr"][()]).all()
