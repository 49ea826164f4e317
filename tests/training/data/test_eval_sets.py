"""Held-in eval definitions: every mistake in the user's `--eval` file is a DataError naming the file."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import SAMPLE_EVAL
from training.data.eval_sets import load_eval_definition
from training.demos.held_in import load_eval_set
from training.errors import DataError


def write(tmp_path, text: str):
    (tmp_path / "train.jsonl").write_text(
        '{"instruction": "q", "input": "", "output": "a"}\n{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello"}]}\n',
        encoding="utf-8",
    )
    path = tmp_path / "eval.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_definition_loads():
    items = load_eval_definition(SAMPLE_EVAL)
    spec = json.loads(SAMPLE_EVAL.read_text(encoding="utf-8"))
    assert [item for item, _ in items] == spec["items"] and len(items) > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "invalid JSON"),
        ('["train.jsonl"]', 'an eval definition is {"data": "<file>", "items": [...]}'),
        ('{"data": "train.jsonl"}', 'an eval definition is {"data": "<file>", "items": [...]}'),
        ('{"data": "train.jsonl", "items": [{"index": 2}]}', "items[0]: 'index' must be a record number below 2"),
        ('{"data": "train.jsonl", "items": [{"index": 0}, {"answer": "a"}]}', "items[1]: 'index' must be"),
        ('{"data": "train.jsonl", "items": [{"index": true}]}', "items[0]: 'index' must be"),
    ],
)
def test_a_bad_definition_is_a_data_error_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=f"^{path}: .*") as raised:
        load_eval_definition(path)
    assert message in str(raised.value)


def test_a_missing_definition_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_eval_definition(tmp_path / "missing.json")


def test_the_japanese_demo_asks_only_alpaca_records(tmp_path):
    items = [{"index": 0, "answer": "a"}, {"index": 1, "answer": "x"}]
    path = write(tmp_path, json.dumps({"data": "train.jsonl", "items": items}))
    with pytest.raises(DataError, match="item 1 is not an Alpaca record"):
        load_eval_set(path)
