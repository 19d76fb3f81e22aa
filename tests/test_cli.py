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
