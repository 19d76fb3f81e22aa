"""The ``backdoorlab`` dispatcher: every subcommand is registered, has --help, and bad input
ends with one line on stderr and exit code 2 (not a traceback)."""

from __future__ import annotations

import pytest

from backdoorlab.cli import COMMANDS, build_parser, main


def test_every_subcommand_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS), "a subcommand module is missing or failed to import"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: backdoorlab " + command in capsys.readouterr().out


def test_unknown_preset_is_one_line_error(tmp_path, capsys):
    code = main(["poison", "--preset", "no-such-preset", "--out", str(tmp_path / "v.h5"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "no-such-preset" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir()), "a failed command must leave no file behind"


def test_missing_data_file_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    code = main(["evaluate", "--data", str(missing), "--model", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "missing" in err and "Traceback" not in err


def test_a_native_crash_prints_every_threads_python_stack():
    """The CLI turns on faulthandler: a SIGSEGV (as the full-size `defend` of #14 died at exit)
    prints the Python stacks instead of a bare status 139."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "pytools"), str(repo)])}
    code = ("import ctypes\nfrom backdoorlab.cli import main\nmain(['poison', '--list-presets'])\n"
            "def crash_here():\n    ctypes.string_at(0)\ncrash_here()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == -11, run.stderr[-2000:]
    assert "Fatal Python error: Segmentation fault" in run.stderr and "crash_here" in run.stderr
