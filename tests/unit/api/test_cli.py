"""The `jobline` command line: parsing and configuration errors."""

from __future__ import annotations

import sys

import pytest

from api.cli import build_parser, main
from api.supervisor import dramatiq_command
from tests.support.proxy import free_port


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


def test_help_lists_the_client_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for command in ("submit", "status", "follow", "cancel", "jobs"):
        assert command in out


def test_params_are_json_when_they_parse_else_strings() -> None:
    args = build_parser().parse_args(
        [
            "submit",
            "--fn",
            "f",
            "--param",
            "n=0.5",
            "--param",
            "flag=true",
            "--param",
            "name=Ada",
            "--param",
            'list=["a", 1]',
            "--param",
            "expr=a=b",
            "--param",
            "empty=",
        ]
    )
    assert dict(args.params) == {
        "n": 0.5,
        "flag": True,
        "name": "Ada",
        "list": ["a", 1],
        "expr": "a=b",
        "empty": "",
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--fn", "f", "--param", "no-equals-sign"])


@pytest.mark.parametrize(
    "command",
    [["status", "1"], ["follow", "1"], ["cancel", "1"], ["jobs"], ["submit", "--fn", "f"]],
)
def test_client_commands_need_no_server_configuration(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOBLINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("JOBLINE_MAX_ATTEMPTS", "zero")  # broken server settings do not matter
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    assert main([*command, "--url", url]) == 2

    err = capsys.readouterr().err
    assert f"server not reachable at {url}" in err
    assert "JOBLINE_DATABASE_URL" not in err
    assert len(err.splitlines()) == 1
