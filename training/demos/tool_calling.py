"""`python -m training tool-demo`: fine-tune SmolLM2-135M-Instruct to call tools, then compare calls through vLLM.

The base model, offered the tools of `data/tools_ja_en.jsonl` (weather, unit conversion, calendar), answers the
held-in Japanese and English requests in prose or invented code; after a short LoRA run on the dataset the
adapter calls the right function with the right arguments. Both are asked through one real service process
started with `--enable-auto-tool-choice` (the `hermes` parser reads the default tool format of `tool_prompt`),
greedy, each request with the record's `tools` and `tool_choice: "auto"`. A reply is right when it makes
exactly the expected call (name equal, arguments equal as parsed JSON), or, for the requests no tool answers,
when it makes no call.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.config import load_config
from training.data.eval_sets import load_eval_definition
from training.data.records import ChatRecord
from training.demos.japanese_qa import DemoSettings, cell, trained_adapter
from training.errors import DataError
from tsumugi.cli_flags import command_settings, setting

if TYPE_CHECKING:
    from training.demos.held_in import EvaluationServer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "training" / "configs" / "demo_smollm2_tools.yaml"
DEFAULT_EVAL = REPO / "data" / "tools_ja_en_eval.json"
ADAPTER_NAME = "tools"


@dataclass(frozen=True)
class ToolRequest:
    """One held-in request: the user's message, the tools offered, and the call a right reply makes (None: none)."""

    text: str
    tools: list[dict]
    call: dict | None


def load_tool_eval_set(eval_file: Path) -> list[ToolRequest]:
    """Requests from an eval definition (`{"data": file, "items": [{"index", "request", "call"}]}`).

    Each item must be held in: its request is the first user message of record `index` and its call is that
    record's first call (or null where the record answers in prose)."""
    requests = []
    for item, record in load_eval_definition(eval_file):
        if not isinstance(record, ChatRecord) or record.tools is None:
            raise DataError(f"{eval_file}: item {item['index']}: {record.source} is not a record with tools")
        user, reply = record.messages[0], record.messages[1]
        held_in = None
        if reply.tool_calls:
            held_in = {"name": reply.tool_calls[0].name, "arguments": json.loads(reply.tool_calls[0].arguments)}
        if (user.role, user.content, reply.role, held_in) != ("user", item["request"], "assistant", item["call"]):
            raise DataError(f"{eval_file}: item {item['index']}: request or call differs from {record.source}")
        requests.append(ToolRequest(text=item["request"], tools=list(record.tools), call=item["call"]))
    return requests


@dataclass(frozen=True)
class ToolScore:
    right: list[bool]
    replies: list[str]
    calls: list[bool]  # whether each request expects a call

    def rate(self, expect_call: bool = True) -> tuple[int, int]:
        """(right, total) over the requests that expect a call (or, with False, those that expect none)."""
        chosen = [right for right, call in zip(self.right, self.calls, strict=True) if call == expect_call]
        return sum(chosen), len(chosen)


def ask(server: EvaluationServer, model: str, request: ToolRequest, max_tokens: int = 64) -> tuple[bool, str]:
    """Whether the model's reply makes exactly the expected call (or none), and the reply as one line."""
    message = server.reply(
        model, [{"role": "user", "content": request.text}], max_tokens, tools=request.tools, tool_choice="auto"
    )
    calls = [call["function"] for call in message.get("tool_calls") or []]
    shown = " ".join(f"{c['name']}({c['arguments']})" for c in calls) or (message.get("content") or "")
    if request.call is None:
        return not calls, shown
    if len(calls) != 1 or calls[0]["name"] != request.call["name"]:
        return False, shown
    try:
        return json.loads(calls[0]["arguments"]) == request.call["arguments"], shown
    except json.JSONDecodeError:
        return False, shown


def score_tool_calls(server: EvaluationServer, models: list[str], requests: list[ToolRequest]) -> list[ToolScore]:
    """One `ToolScore` per model, every (model, request) asked at once (`asked_of_each`)."""
    from training.demos.held_in import asked_of_each  # httpx: only here

    calls = [request.call is not None for request in requests]
    return [
        ToolScore(right=[right for right, _ in answers], replies=[shown for _, shown in answers], calls=calls)
        for answers in asked_of_each(lambda model, request: ask(server, model, request), models, requests)
    ]


def run_tool_demo(config: Path, eval_file: Path, overrides: dict, retrain: bool = False) -> tuple[ToolScore, ToolScore]:
    """Train (unless a finished adapter exists) and return (base score, adapter score)."""
    from training.demos.held_in import EvaluationServer  # httpx and the service: only here
    from tsumugi.tool_prompt import DEFAULT_TOOL_PARSER

    cfg = load_config(config, overrides)
    out = trained_adapter(cfg, retrain)
    requests = load_tool_eval_set(eval_file)
    service_args = ["--model", cfg.base, "--lora-modules", f"{ADAPTER_NAME}={out}", "--dtype", "float32",
                    "--enable-auto-tool-choice", "--tool-call-parser", DEFAULT_TOOL_PARSER]  # fmt: skip
    with EvaluationServer(service_args, out.with_name(out.name + ".serve.log")) as server:
        before, after = score_tool_calls(server, [cfg.base, ADAPTER_NAME], requests)
    print_tool_table(requests, before, after)
    return before, after


def print_tool_table(requests: list[ToolRequest], before: ToolScore, after: ToolScore) -> None:
    print(f"\n{'request':<30} {'expected':<34} {'base model':<31} {'fine-tuned (LoRA)':<31}")
    for index, request in enumerate(requests):
        call = request.call
        expected = f"{call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})" if call else "(no call)"
        mark_b, mark_a = ("✓" if s.right[index] else "✗" for s in (before, after))
        print(f"{cell(request.text):<30} {cell(expected, 34):<34} {mark_b} {cell(before.replies[index]):<29} "
              f"{mark_a} {cell(after.replies[index]):<29}")  # fmt: skip
    (base_right, total), (tuned_right, _) = before.rate(), after.rate()
    (base_prose, prose), (tuned_prose, _) = before.rate(expect_call=False), after.rate(expect_call=False)
    print(f"\nright call and arguments: base {base_right}/{total}, fine-tuned {tuned_right}/{total}")
    print(f"no call where none is needed: base {base_prose}/{prose}, fine-tuned {tuned_prose}/{prose}")


@command_settings
class ToolCallingSettings(DemoSettings):
    """`python -m training tool-demo`: its flags, and their defaults."""

    config: Path = setting(DEFAULT_CONFIG)
    eval: Path = setting(DEFAULT_EVAL, "held-in request set")
    epochs: float | None = setting(None)


def run_tool_demo_command(args: argparse.Namespace) -> None:
    overrides = {"base": args.base, "out": args.out, "optim.epochs": args.epochs}
    before, after = run_tool_demo(args.config, args.eval, overrides, args.retrain)
    if args.results:
        payload = {name: summary(result) for name, result in (("base", before), ("fine_tuned", after))}
        args.results.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")


def summary(result: ToolScore) -> dict:
    (right, total), (prose_right, prose_total) = result.rate(), result.rate(expect_call=False)
    return {"calls_right": right, "calls": total, "rate": right / total if total else 0.0,
            "prose_right": prose_right, "prose": prose_total, "replies": result.replies}  # fmt: skip
