"""Ask a served model the held-in questions and score exact answers, through the real service.

Training output is only done when the service answers correctly with it, so evaluation starts
`python -m service` from the serving virtualenv (vLLM lives there, not in the training env) and sends
greedy chat requests over HTTP: the adapter is prompted through its own chat template, as users will.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from training.data.eval_sets import load_eval_definition
from training.data.records import AlpacaRecord
from training.errors import DataError, TrainingError

REPO = Path(__file__).resolve().parents[2]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"
PARALLEL_REQUESTS = 16
Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Question:
    """One held-in question: the chat message a user sends, the substring a correct reply contains, and the
    record's whole answer (what the adapter was trained to say; the report's reference)."""

    prompt: str
    answer: str
    reference: str = ""


def load_eval_set(eval_file: Path) -> list[Question]:
    """Questions from an eval definition (`{"data": file, "items": [{"index", "answer"}]}`).

    Records with an `input` are asked as instruction + blank line + input in one user message."""
    questions = []
    for item, record in load_eval_definition(eval_file):
        if not isinstance(record, AlpacaRecord):
            raise DataError(f"{eval_file}: item {item['index']} is not an Alpaca record")
        prompt = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
        questions.append(Question(prompt=prompt, answer=item["answer"], reference=record.output))
    return questions


class EvaluationServer:
    """The service from the serving virtualenv, as a context manager, answering `.chat(model, text)` greedily.

    Not `service.adapters.registry.ServedModel` (a model the service serves): this is a whole service process."""

    def __init__(self, service_args: list[str], log_path: Path, ready_timeout: float = 600.0) -> None:
        if not SERVE_PYTHON.exists():
            raise TrainingError(f"{SERVE_PYTHON} is missing; run `make .venv-serve/.installed` first")
        # The repo's top-level launcher; imported here because it exists only beside a serving env (a checkout).
        from tsumugi.launcher import service_process

        # VIRTUAL_ENV would name the training env while the serving env's Python runs.
        # A private server on a loopback port for the evaluation's own requests: no keys to hand around.
        self.server = service_process(
            [*service_args, "--no-auth"],
            log_path,
            python=SERVE_PYTHON,
            env={"VIRTUAL_ENV": None},
            ready_timeout=ready_timeout,
        )

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> EvaluationServer:
        self.server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()

    def chat(self, model: str, text: str, max_tokens: int = 48) -> str:
        """Greedy reply to one user message."""
        return self.reply(model, [{"role": "user", "content": text}], max_tokens)["content"] or ""

    def reply(self, model: str, messages: list[dict], max_tokens: int, **fields: object) -> dict:
        """The greedy reply message to `messages` (with `tool_calls` when the model called a tool); `fields` are
        further request fields, such as `tools`."""
        response = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, **fields},
            timeout=120,
        )
        response.raise_for_status()
        return response.json()["choices"][0]["message"]


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    replies: list[str]

    @classmethod
    def of(cls, questions: Sequence[Question], replies: list[str]) -> Score:
        """A reply is correct when it contains the question's answer."""
        correct = sum(q.answer in reply for q, reply in zip(questions, replies, strict=True))
        return cls(correct=correct, total=len(questions), replies=replies)

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0


def asked_at_once(ask: Callable[[Item], Answer], items: Sequence[Item]) -> list[Answer]:
    """`ask` for every item at once, answers in the items' order: the engine batches the requests (greedy, so
    the replies are those asked one by one, up to floating-point rounding), several times faster than in turn on
    a CPU."""
    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        return list(pool.map(ask, items))


def asked_of_each(
    ask: Callable[[str, Item], Answer], models: Sequence[str], items: Sequence[Item]
) -> list[list[Answer]]:
    """`ask(model, item)` for every model and item, all at once (the base and its adapter share one batch and the
    prompt prefix cache), split back into one answer list per model."""
    pairs = [(model, item) for model in models for item in items]
    answers = asked_at_once(lambda pair: ask(*pair), pairs)
    return [answers[n * len(items) : (n + 1) * len(items)] for n in range(len(models))]


def score_models(
    server: EvaluationServer, models: Sequence[str], questions: list[Question], max_tokens: int = 48
) -> list[Score]:
    """One `Score` per model, in the models' order."""
    replies = asked_of_each(lambda model, q: server.chat(model, q.prompt, max_tokens), models, questions)
    return [Score.of(questions, model_replies) for model_replies in replies]
