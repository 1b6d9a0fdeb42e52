"""The `jobline` command line: parsing and configuration errors."""

from __future__ import annotations

import sys

import pytest

from api.cli import build_parser, main
from api.supervisor import dramatiq_command


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("api", "worker", "migrate", "dev"):
        assert command in out


def test_worker_options_are_parsed() -> None:
    args = build_parser().parse_args(["worker", "--processes", "3", "--threads", "5"])
    assert (args.processes, args.threads) == (3, 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--processes", "0"])


@pytest.mark.parametrize("command", [["migrate"], ["api"], ["worker"]])
def test_missing_database_url_is_a_clear_error(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOBLINE_DATABASE_URL", raising=False)
    assert main(command) == 2
    assert "JOBLINE_DATABASE_URL" in capsys.readouterr().err


def test_invalid_configuration_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBLINE_MAX_ATTEMPTS", "zero")
    assert main(["migrate"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_worker_runs_dramatiq_on_the_actors_module() -> None:
    assert dramatiq_command(processes=2, threads=8) == [
        sys.executable,
        "-m",
        "dramatiq",
        "actors.worker",
        "--processes",
        "2",
        "--threads",
        "8",
    ]
