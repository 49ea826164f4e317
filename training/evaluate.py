"""Ask a served model the held-in questions and score exact answers, through the real service.

Training output is only done when the service answers correctly with it, so evaluation starts
`python -m service` from the serving virtualenv (vLLM lives there, not in the training env) and sends
greedy chat requests over HTTP: the adapter is prompted through its own chat template, as users will.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from training.data import AlpacaRecord, load_records

REPO = Path(__file__).resolve().parent.parent
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"


@dataclass(frozen=True)
class Question:
    """One held-in question: the chat message a user sends and the substring a correct reply contains."""

    prompt: str
    answer: str


def load_eval_set(eval_file: Path) -> list[Question]:
    """Questions from an eval definition (`{"data": file, "items": [{"index", "answer"}]}`).

    Records with an `input` are asked as instruction + blank line + input in one user message."""
    spec = json.loads(Path(eval_file).read_text(encoding="utf-8"))
    records = load_records([Path(eval_file).parent / spec["data"]]).records
    questions = []
    for item in spec["items"]:
        record = records[item["index"]]
        if not isinstance(record, AlpacaRecord):
            raise ValueError(f"{eval_file}: item {item['index']} is not an Alpaca record")
        prompt = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
        questions.append(Question(prompt=prompt, answer=item["answer"]))
    return questions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedModel:
    """`python -m service` in a subprocess; use as a context manager, then `.chat(model, text)`."""

    def __init__(self, service_args: list[str], log_path: Path, ready_timeout: float = 600.0) -> None:
        if not SERVE_PYTHON.exists():
            raise FileNotFoundError(f"{SERVE_PYTHON} is missing; run `make .venv-serve/.installed` first")
        self.port = free_port()
        self.args = [str(SERVE_PYTHON), "-m", "service", *service_args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = Path(log_path)
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedModel:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        env.pop("VIRTUAL_ENV", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"service not ready after {self.ready_timeout} s:\n{self.log_tail()}")

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def chat(self, model: str, text: str, max_tokens: int = 48) -> str:
        """Greedy reply to one user message."""
        response = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": max_tokens,
            },
            timeout=120,
        )
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"] or ""


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    replies: list[str]

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0


def score(server: ServedModel, model: str, questions: list[Question], max_tokens: int = 48) -> Score:
    replies = [server.chat(model, q.prompt, max_tokens) for q in questions]
    correct = sum(q.answer in reply for q, reply in zip(questions, replies, strict=True))
    return Score(correct=correct, total=len(questions), replies=replies)
