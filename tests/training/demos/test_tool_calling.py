"""The tool-calling demo on SmolLM2-135M-Instruct: served through our service with `tools`, the adapter makes the
right call with the right arguments for the held-in requests, the base model does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.training.conftest import REPO
from training.config import load_config
from training.data.records import DataError, load_records
from training.demos.tool_calling import DEFAULT_CONFIG, DEFAULT_EVAL, ToolRequest, load_tool_eval_set, score_tool_calls
from tsumugi.default_model import DEFAULT_MODEL

SMOLLM2 = REPO / DEFAULT_MODEL


def test_eval_set_is_held_in_and_covers_every_tool():
    requests = load_tool_eval_set(DEFAULT_EVAL)
    cfg = load_config(DEFAULT_CONFIG, {})
    assert cfg.data.records is None and [REPO / p for p in cfg.data.paths] == [DEFAULT_EVAL.with_name(
        json.loads(DEFAULT_EVAL.read_text(encoding="utf-8"))["data"])]  # fmt: skip
    assert len(requests) == len(load_records([REPO / cfg.data.paths[0]]).records)  # every record's first turn
    names = {r.call["name"] for r in requests if r.call}
    assert names == {"get_weather", "convert_units", "lookup_calendar"}
    assert sum(r.call is None for r in requests) >= 6
    assert any(ord(ch) > 0x3000 for r in requests for ch in r.text)  # Japanese
    assert any(r.text.isascii() for r in requests)  # and English


def test_an_item_that_is_not_held_in_is_refused(tmp_path):
    spec = json.loads(DEFAULT_EVAL.read_text(encoding="utf-8"))
    spec["data"] = str(DEFAULT_EVAL.with_name(spec["data"]))
    spec["items"][0]["call"]["arguments"]["city"] = "大阪"
    (tmp_path / "eval.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match="item 0: request or call differs"):
        load_tool_eval_set(tmp_path / "eval.json")


class FakeServer:
    """Answers each request (by its text) with a canned reply message, as the service's `message` object."""

    def __init__(self, replies: dict[str, dict]) -> None:
        self.replies = replies

    def reply(self, model, messages, max_tokens, **fields) -> dict:
        assert fields == {"tools": [{"type": "function"}], "tool_choice": "auto"}
        return self.replies[messages[-1]["content"]]


def called(name: str, arguments: str, times: int = 1) -> dict:
    call = {"id": "x", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"content": None, "tool_calls": [call] * times}


def test_a_reply_is_right_only_with_exactly_the_expected_call():
    replies = [
        called("get_weather", '{"city": "東京"}'),  # right
        called("get_weather", '{ "city" : "東京" }'),  # right: compared as JSON, not as text
        called("get_weather", '{"city": "東京", "unit": "celsius"}'),  # an extra argument
        called("get_weather", '{"city": "大阪"}'),
        called("lookup_calendar", '{"city": "東京"}'),
        called("get_weather", '{"city": "東京"'),  # not JSON
        {"content": "晴れです。", "tool_calls": None},
        called("get_weather", '{"city": "東京"}', times=2),
        {"content": "こんにちは！", "tool_calls": []},  # right: no call where none is needed
        called("get_weather", '{"city": "東京"}'),
    ]
    weather = {"name": "get_weather", "arguments": {"city": "東京"}}
    requests = [ToolRequest(f"q{n}", [{"type": "function"}], weather if n < 8 else None) for n in range(10)]
    (score,) = score_tool_calls(FakeServer({f"q{n}": reply for n, reply in enumerate(replies)}), ["m"], requests)
    assert score.right == [True, True, False, False, False, False, False, False, True, False]
    assert score.rate() == (2, 8) and score.rate(expect_call=False) == (1, 2)
    assert score.replies[0] == 'get_weather({"city": "東京"})' and score.replies[6] == "晴れです。"


@pytest.mark.engine
@pytest.mark.slow
def test_tool_demo_before_and_after(tmp_path):
    if not (SMOLLM2 / "config.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: run `make {SMOLLM2.relative_to(REPO)}/config.json` (make test does)")
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "training", "tool-demo", "--out", str(tmp_path / "adapter"),
               "--results", str(results)]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "right call and arguments: base" in run.stdout
    scores = json.loads(results.read_text(encoding="utf-8"))
    base, tuned = scores["base"], scores["fine_tuned"]
    print(f"\nright calls: base {base['calls_right']}/{base['calls']}, fine-tuned {tuned['calls_right']}/"
          f"{tuned['calls']}; no call where none is needed: base {base['prose_right']}/{base['prose']}, "
          f"fine-tuned {tuned['prose_right']}/{tuned['prose']}")  # fmt: skip
    assert tuned["rate"] >= 0.8, tuned["replies"]
    assert base["rate"] <= 0.1, base["replies"]
    assert tuned["prose_right"] >= tuned["prose"] - 1, tuned["replies"]
