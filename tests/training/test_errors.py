"""Errors by origin: a user's mistake is one line and exit 2; our own bug keeps its traceback and exits 1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.training.conftest import REPO
from training.errors import ConfigError
from training.export.merge import merge_adapter
from training.memory import plan

# `python -m training memory ...` with the planner replaced by one that fails as a bug in our code would.
BUGGY_RUN = """
import runpy, sys
import training.memory

def planner_with_a_bug(*args, **kwargs):
    raise {error}("a file of ours that is missing")

training.memory.plan = planner_with_a_bug
sys.argv = ["training", "memory", "--model", "llama-3-8b", "--mode", "serve"]
runpy.run_module("training", run_name="__main__", alter_sys=True)
"""


def test_a_user_mistake_is_one_line_and_exit_2(tmp_path):
    command = [sys.executable, "-m", "training", "memory", "--model", str(tmp_path), "--mode", "serve"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path}: a directory without config.json, so not a model directory"
    ]


@pytest.mark.parametrize("error", ["KeyError", "FileNotFoundError"])
def test_our_bug_keeps_its_traceback_and_exits_1(error):
    """A FileNotFoundError too: raised by our code it is a bug, not a path the user named."""
    command = [sys.executable, "-c", BUGGY_RUN.format(error=error)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "planner_with_a_bug" in result.stderr
    assert not result.stderr.startswith("error:")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan("llama-3-8b", "inference"), "--mode must be one of"),
        (lambda: plan("llama-3-8b", "serve", "int3"), "--dtype for serving must be one of"),
        (lambda: merge_adapter("base", "adapter", "out", dtype="int8"), "--dtype must be one of"),
    ],
)
def test_a_bad_argument_to_a_command_function_is_a_config_error(call, message):
    """These functions are also called from Python (deploy/plan_resources.py, tests): a bad value is the caller's
    mistake and is reported as the command would report it."""
    with pytest.raises(ConfigError, match=message):
        call()
