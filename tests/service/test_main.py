"""`python -m service` tells the operator's mistakes from our bugs: a `StartupError` is one line and exit 2,
anything else keeps its traceback and exits 1 (in process: `main` is called with a stubbed app factory)."""

from __future__ import annotations

import pytest

import service.__main__ as cli
from service.errors import ArtifactError, StartupError


def test_a_startup_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise StartupError("--tool-call-parser nope: unknown")

    monkeypatch.setattr(cli, "create_app", refuse)
    assert cli.main(["--no-auth"]) == 2
    err = capsys.readouterr().err
    assert err == "invalid configuration: --tool-call-parser nope: unknown\n"


def test_a_bug_of_ours_is_not_reported_as_configuration(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug in our own start-up code")

    monkeypatch.setattr(cli, "create_app", broken)
    with pytest.raises(ValueError, match="a bug in our own"):  # escapes main: Python prints it, exit 1
        cli.main(["--no-auth"])


@pytest.mark.parametrize(
    ("error", "code"),
    [(StartupError("bad flag"), 2), (ArtifactError("adapter 'b': refused"), 2), (RuntimeError("engine died"), 1)],
)
def test_a_fatal_error_after_the_start_exits_by_origin(error, code):
    import uvicorn

    server = cli.DrainingServer(uvicorn.Config(app=None))
    server.fail(error)
    assert (server.exit_code, server.should_exit) == (code, True)
