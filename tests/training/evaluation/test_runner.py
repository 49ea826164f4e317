"""The evaluation runner against a real HTTP server on a loopback port: order, concurrency, retries, cache, resume."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from training.errors import ConfigError, TrainingError
from training.evaluation.runner.cache import CACHE_FILE
from training.evaluation.runner.client import Runner
from training.evaluation.runner.endpoint import Endpoint, EndpointError
from training.evaluation.runner.flags import add_endpoint_arguments, endpoint_from_args, runner_from_args
from training.evaluation.runner.responses import retry_after_seconds

REPO = Path(__file__).resolve().parents[3]
SERVED_MODELS = ("m", "m2")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops simultaneous connects, which then wait a second to retry


class FakeOpenAI:
    """Just enough of `/v1/completions` and `/v1/chat/completions`: answers `echo:<prompt or last message>`.

    It records every request body and Authorization header, the most requests it was handling at once, and
    takes a plan of misbehaviours for the next requests in arrival order: "429" (with Retry-After: 1), "503",
    "slow" (answers after `slow_s`), "400" (an OpenAI error envelope), "garbage" (a 200 that is not JSON), "ok".
    A body's own `delay_s` field delays its answer (to finish requests out of order)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.answered: list[str] = []  # questions in the order their answers were ready
        self.authorizations: list[str | None] = []
        self.plan: list[str] = []
        self.delay_s = 0.0
        self.slow_s = 1.0
        self.in_flight = self.max_in_flight = 0
        self.httpd = Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        with self.lock:
            return [_question(body) for body in self.bodies]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def respond(self, path: str, body: dict, authorization: str | None) -> tuple[int, dict, bytes]:
        """(status, headers, body bytes) for one request; sleeps first when the plan or the body asks."""
        with self.lock:
            self.bodies.append(body)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            behaviour = self.plan.pop(0) if self.plan else "ok"
        try:
            return self._answer(path, body, behaviour)
        finally:
            with self.lock:  # before the response is written: the client can send its next request only after
                self.in_flight -= 1

    def _answer(self, path: str, body: dict, behaviour: str) -> tuple[int, dict, bytes]:
        if behaviour == "429":
            return _error(429, "Rate limit reached, slow down.", {"Retry-After": "1"})
        if behaviour == "503":
            return _error(503, "The engine is busy.")
        if behaviour == "400":
            return _error(400, "max_tokens must be at least 1, got 0.")
        if behaviour == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html>proxy says hello</html>"
        time.sleep(self.slow_s if behaviour == "slow" else body.get("delay_s", self.delay_s))
        if body.get("model") not in SERVED_MODELS:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        expected = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        if path != expected:
            return _error(400, f"{path} got the wrong kind of body")
        with self.lock:
            self.answered.append(_question(body))
        return 200, {"Content-Type": "application/json"}, json.dumps(_completion(path, body)).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, payload = fake.respond(self.path, body, self.headers.get("Authorization"))
                try:
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test) or was killed (the resume test)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _question(body: dict) -> str:
    return body["prompt"] if "prompt" in body else body["messages"][-1]["content"]


def _completion(path: str, body: dict) -> dict:
    text = f"echo:{_question(body)}"
    usage = {"prompt_tokens": len(_question(body)), "completion_tokens": len(text), "total_tokens": 0}
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": "length"}
    return {"object": "text_completion", "model": body["model"], "choices": [choice], "usage": usage}


def _error(status: int, message: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    envelope = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(envelope).encode()


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


def completion(question: str, **fields) -> dict:
    return {"prompt": question, "max_tokens": 8, "temperature": 0.0, **fields}


def chat(question: str, **fields) -> dict:
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": question}], **fields}


def quick_runner(cache_dir: Path | None = None, **settings) -> Runner:
    """Test-speed backoff; everything else as a user gets it."""
    return Runner(cache_dir, progress=False, **{"backoff_s": 0.01, **settings})


def test_answers_come_back_in_payload_order_from_both_endpoints(server):
    # Later payloads answer sooner, so completion order is the reverse of payload order.
    payloads = [(completion if i % 2 else chat)(f"q{i}", delay_s=round(0.05 * (8 - i), 2)) for i in range(8)]
    runner = quick_runner(concurrency=8)

    answers = runner.run(Endpoint(server.base_url, "m"), payloads)

    assert [a.text for a in answers] == [f"echo:q{i}" for i in range(8)]
    assert [a.finish_reason for a in answers] == ["stop", "length"] * 4  # chat, completions: each path was right
    assert all(not a.cached and a.usage["prompt_tokens"] == 2 for a in answers)
    assert (runner.sent, runner.cache_hits, runner.retries) == (8, 0, 0)
    assert server.answered != [f"q{i}" for i in range(8)]  # really concurrent, and finished out of order


def test_no_more_requests_in_flight_than_the_concurrency(server):
    server.delay_s = 0.15
    answers = quick_runner(concurrency=3).run(Endpoint(server.base_url, "m"), [completion(f"q{i}") for i in range(12)])
    assert len(answers) == 12
    assert server.max_in_flight == 3


def test_429_waits_for_retry_after_then_succeeds(server):
    server.plan = ["429"]
    runner = quick_runner(max_retries=3)
    started = time.monotonic()

    [answer] = runner.run(Endpoint(server.base_url, "m"), [completion("q")])

    assert time.monotonic() - started >= 1.0  # the header's value, not the 0.01 s backoff
    assert answer.text == "echo:q"
    assert (runner.sent, runner.retries) == (2, 1)


def test_503_is_retried_with_backoff(server):
    server.plan = ["503", "503"]
    runner = quick_runner(max_retries=3)
    [answer] = runner.run(Endpoint(server.base_url, "m"), [chat("q")])
    assert answer.text == "echo:q"
    assert (runner.sent, runner.retries) == (3, 2)


def test_exhausted_retries_name_the_endpoint_the_last_status_and_what_is_kept(server, tmp_path):
    server.plan = ["ok", "503", "503", "503"]
    runner = quick_runner(tmp_path / "cache", concurrency=1, max_retries=2)

    with pytest.raises(EndpointError) as caught:
        runner.run(Endpoint(server.base_url, "m"), [completion("first"), completion("second")])

    message = str(caught.value)
    assert message.startswith(f"{server.base_url}/completions (model 'm'): no answer after 3 attempts")
    assert "the last: HTTP 503: The engine is busy." in message
    assert f"1 answers are kept in {tmp_path / 'cache' / CACHE_FILE}" in message
    assert isinstance(caught.value, TrainingError) and "\n" not in message
    assert (runner.sent, runner.retries) == (4, 2)
    again = quick_runner(tmp_path / "cache")
    assert [a.text for a in again.run(Endpoint(server.base_url, "m"), [completion("first"), completion("second")])]
    assert (again.cache_hits, again.sent) == (1, 1)


def test_a_request_slower_than_the_timeout_is_retried_then_reported(server):
    server.plan, server.slow_s = ["slow", "slow", "slow"], 1.0
    runner = quick_runner(max_retries=2, timeout_s=0.3)
    with pytest.raises(
        EndpointError,
        match=r"no answer after 3 attempts, the last: ReadTimeout: nothing within --timeout 0.3 s; no --cache-dir",
    ):
        runner.run(Endpoint(server.base_url, "m"), [completion("q")])
    assert runner.sent == 3


def test_nothing_listening_is_a_connection_error_after_retries():
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:9/v1/completions .*the last: ConnectError"):
        quick_runner(max_retries=1).run(Endpoint("http://127.0.0.1:9/v1", "m"), [completion("q")])


@pytest.mark.parametrize(
    ("plan", "model", "message"),
    [
        (["400"], "m", r"/v1/chat/completions refused model 'm': HTTP 400: max_tokens must be at least 1, got 0\.$"),
        ([], "nope", r"refused model 'nope': HTTP 404: The model `nope` does not exist\.$"),
    ],
)
def test_a_refusal_is_a_user_error_at_once_with_the_servers_message(server, plan, model, message):
    server.plan = plan
    runner = quick_runner(max_retries=5)
    with pytest.raises(TrainingError, match=message):
        runner.run(Endpoint(server.base_url, model), [chat("q")])
    assert (runner.sent, runner.retries) == (1, 0)


def test_a_200_that_is_not_an_answer_is_an_error_not_an_answer(server, tmp_path):
    server.plan = ["garbage"]
    runner = quick_runner(tmp_path)
    with pytest.raises(EndpointError, match=r"HTTP 200 but the body is not JSON: '<html>proxy says hello</html>'"):
        runner.run(Endpoint(server.base_url, "m"), [completion("q")])
    assert rows(tmp_path / CACHE_FILE) == 0  # errors are never cached


def test_a_second_run_is_answered_from_the_cache_with_nothing_sent(server, tmp_path):
    payloads = [completion(f"q{i}") for i in range(5)] + [chat("c"), completion("q0")]  # a repeat is sent once
    first = quick_runner(tmp_path).run(Endpoint(server.base_url, "m"), payloads)
    assert len(server.bodies) == 6

    runner = quick_runner(tmp_path)
    second = runner.run(Endpoint(server.base_url + "/", "m"), payloads)  # the same endpoint, written differently

    assert len(server.bodies) == 6
    assert (runner.sent, runner.cache_hits) == (0, 7)
    assert [(a.text, a.finish_reason, a.usage) for a in second] == [(a.text, a.finish_reason, a.usage) for a in first]
    assert all(a.cached for a in second) and not any(a.cached for a in first)


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        ("m2", completion("q")),
        ("m", completion("q", temperature=0.5)),
        ("m", completion("q", max_tokens=9)),
        ("m", completion("q ")),
        ("m", {**completion("q"), "seed": 1}),
    ],
)
def test_any_change_to_the_model_or_a_payload_field_is_a_cache_miss(server, tmp_path, model, payload):
    quick_runner(tmp_path).run(Endpoint(server.base_url, "m"), [completion("q")])
    runner = quick_runner(tmp_path)
    [answer] = runner.run(Endpoint(server.base_url, model), [payload])
    assert (runner.sent, runner.cache_hits, answer.cached) == (1, 0, False)


def test_the_api_key_is_sent_but_neither_keyed_nor_stored(server, tmp_path):
    secret = "sk-test-SECRET-4242"
    quick_runner(tmp_path).run(Endpoint(server.base_url, "m", api_key=secret), [completion("q"), chat("c")])
    assert server.authorizations == [f"Bearer {secret}"] * 2
    assert secret not in repr(Endpoint(server.base_url, "m", api_key=secret))

    runner = quick_runner(tmp_path)  # another key, the same model: the same answers
    runner.run(Endpoint(server.base_url, "m", api_key="sk-other"), [completion("q"), chat("c")])
    assert runner.cache_hits == 2

    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert b'"model":"m"' in stored
    assert secret.encode() not in stored and b"sk-other" not in stored


def rows(database: Path) -> int:
    """Answers committed so far, read from outside the writing process."""
    if not database.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=1)) as db:
            return db.execute("SELECT count(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


KILLABLE_RUN = """
import sys
from pathlib import Path
from training.evaluation.runner.client import Runner
from training.evaluation.runner.endpoint import Endpoint
payloads = [{"prompt": f"q{i}", "max_tokens": 8} for i in range(int(sys.argv[3]))]
Runner(Path(sys.argv[2]), concurrency=2, progress=False).run(Endpoint(sys.argv[1], "m"), payloads)
"""


def test_a_killed_run_keeps_its_answers_and_a_rerun_sends_only_the_missing(server, tmp_path):
    """SIGKILL half-way, then rerun: every answer committed before the kill is never asked again.

    The requests in flight at the moment of the kill (at most `concurrency`) had reached the server without
    their answers reaching the cache, so those, and only those, are asked a second time."""
    server.delay_s, total = 0.2, 16
    database = tmp_path / "cache" / CACHE_FILE
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", KILLABLE_RUN, server.base_url, str(tmp_path / "cache"), str(total)]
    process = subprocess.Popen(args, env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while rows(database) < total // 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = rows(database)
    assert total // 2 <= kept < total, "the run was not killed half-way"
    with contextlib.closing(sqlite3.connect(database)) as db:
        answered = {json.loads(request)["body"]["prompt"] for (request,) in db.execute("SELECT request FROM answers")}
    before = Counter(server.prompts())

    runner = Runner(tmp_path / "cache", concurrency=2, progress=False)
    answers = runner.run(Endpoint(server.base_url, "m"), [{"prompt": f"q{i}", "max_tokens": 8} for i in range(total)])

    assert [a.text for a in answers] == [f"echo:q{i}" for i in range(total)]
    assert (runner.cache_hits, runner.sent) == (kept, total - kept)
    received = Counter(server.prompts())
    assert set(received) == {f"q{i}" for i in range(total)}
    assert all(received[q] == 1 for q in answered)  # answered before the kill: asked exactly once in all
    asked_twice = {q for q, n in received.items() if n == 2}
    assert asked_twice <= set(before) - answered and len(asked_twice) <= 2  # only those in flight at the kill
    assert max(received.values()) <= 2


def test_retry_after_reads_seconds_and_http_dates():
    now = time.time()
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("0.5", now) == 0.5
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1.01)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after_seconds("-3", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_a_long_retry_after_is_capped(server):
    server.plan = ["429"]
    runner = quick_runner(max_retry_after_s=0.2)
    started = time.monotonic()
    runner.run(Endpoint(server.base_url, "m"), [completion("q")])
    assert time.monotonic() - started < 0.9


def test_endpoint_flags_build_the_runner_and_the_endpoint(tmp_path):
    parser = argparse.ArgumentParser()
    add_endpoint_arguments(parser)
    args = parser.parse_args(
        ["--concurrency", "3", "--cache-dir", str(tmp_path), "--timeout", "5", "--max-retries", "0"]
    )

    runner = runner_from_args(args, progress=False)
    assert (runner.concurrency, runner.cache_dir, runner.timeout_s, runner.max_retries) == (3, tmp_path, 5.0, 0)

    local = endpoint_from_args(args, "m", environ={"OPENAI_API_KEY": "sk-openai"})
    assert (local.base_url, local.model, local.api_key) == ("http://127.0.0.1:8000/v1", "m", None)
    ours = endpoint_from_args(args, "m", environ={"TSUMUGI_EVAL_API_KEY": "k1", "OPENAI_API_KEY": "sk-openai"})
    assert ours.api_key == "k1"
    openai = parser.parse_args(["--base-url", "https://api.openai.com/v1"])
    assert endpoint_from_args(openai, "gpt-4o-mini", environ={"OPENAI_API_KEY": "sk-openai"}).api_key == "sk-openai"
    given = parser.parse_args(["--api-key", "k2"])
    assert endpoint_from_args(given, "m", environ={"TSUMUGI_EVAL_API_KEY": "k1"}).api_key == "k2"

    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "0"])
    with pytest.raises(ConfigError, match="--base-url must be an http"):
        Endpoint("127.0.0.1:8000/v1", "m")
    with pytest.raises(ConfigError, match=r"cannot use .* as the answer cache"):
        (tmp_path / "file").write_text("x")
        quick_runner(tmp_path / "file").run(Endpoint("http://127.0.0.1:9/v1", "m"), [completion("q")])
