"""Start a server as a subprocess, wait until it answers, stop it: one implementation for every caller.

Tests, `training.demos.held_in`, `bench.serving` and the deploy scrape test all run real servers (ours, vLLM's own
OpenAI server, Prometheus) on free loopback ports. They need the same things: the log in a file, readiness
polled over HTTP with the log tail in the error when the process dies or never becomes ready, and a stop that
cannot hang. Standard library only, in the shared `tsumugi` package rather than in `service/` or
`training/`: the serving, training and tools virtualenvs all import it, and the two packages share files,
never imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Loopback never goes through a proxy; urllib would otherwise honour http_proxy/HTTP_PROXY from the environment.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Servers still stopping on their own threads (`ServerProcess.stop_in_background`), until `wait_for_stops`.
_STOPPING: list[threading.Thread] = []


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it), for a server about to be started."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def answers_200(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of `url` returns 200; refused connections, timeouts and other statuses are all `False`."""
    try:
        with _LOOPBACK.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # HTTPError (503 while starting or draining) is a URLError
        return False


class ServerProcess:
    """One server subprocess on `HOST:port`, ready once `GET ready_path` answers 200.

    The process leads its own process group, so `stop()` can SIGKILL engine child processes that outlive a
    hung parent; SIGTERM goes to the parent only, which must be free to drain and shut its children down in
    order (our service keeps answering streams after SIGTERM). Not a new session: run as a session leader
    (`start_new_session`), the service stopped accepting connections within a second of SIGTERM while it
    was still draining (tests/service/test_drain.py fails; vLLM 0.32, uvicorn 0.54, cause not found).
    """

    def __init__(
        self,
        argv: Sequence[str | Path],
        log_path: Path,
        *,
        port: int,
        ready_path: str = "/ready",
        cwd: Path = REPO,
        env: Mapping[str, str | None] | None = None,
        name: str | None = None,
        ready_timeout: float = 600.0,
        stop_grace: float = 60.0,
    ) -> None:
        """`env` is layered on the inherited environment; a value of None removes that variable."""
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.port = port
        self.ready_path = ready_path
        self.cwd = cwd
        self.env = {**os.environ}
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.name = name or Path(self.argv[0]).name
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ServerProcess:
        """Start the process and return once it is ready; on failure it is stopped and the log tail raised."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        try:
            self.wait_until(lambda: answers_200(self.url + self.ready_path), self.ready_timeout, "ready")
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
        """Poll `predicate` until it holds; raise with the log tail if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None:
                raise RuntimeError(f"{self.name} was never started")
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before {what}:\n{self.log_tail()}"
                )
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} not {what} after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(interval)

    def terminate(self) -> None:
        """SIGTERM the server and return at once (a drain test watches what happens next)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, wait up to `stop_grace` s, then SIGKILL the whole process group; returns the exit status.

        Whatever is left in the group after the parent exits (an orphaned engine process) is killed too, so
        nothing outlives `stop()` and holds the port or memory.
        """
        if self.process is None:
            return None
        self.terminate()
        try:
            self.process.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:
            self._kill_group()
            self.process.wait()
        self._kill_group()
        return self.process.returncode

    def stop_in_background(self) -> threading.Thread:
        """`stop()` on a thread of its own, for a caller with nothing left to ask of the server.

        vLLM's shutdown takes about 5 s (the engine, then its worker, exit in turn); a test fixture's teardown
        need not wait for it before the next test starts. The thread is not a daemon: the interpreter waits
        for it before exiting, so nothing outlives the caller's process either.
        """
        thread = threading.Thread(target=self.stop, name=f"stop {self.name} on port {self.port}")
        thread.start()
        _STOPPING.append(thread)
        return thread

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def wait_for_stops() -> None:
    """Return once every server stopped in the background has exited: for a caller that measures the machine
    (its free memory) and must not count what a stopping server is about to give back."""
    while _STOPPING:
        _STOPPING.pop().join()


def service_process(
    args: Sequence[str | Path],
    log_path: Path,
    *,
    python: str | Path = sys.executable,
    env: Mapping[str, str | None] | None = None,
    ready_timeout: float = 600.0,
    stop_grace: float = 60.0,
) -> ServerProcess:
    """`python -m service *args` on a free loopback port, ready on `/ready` (not started yet).

    `python` picks the virtualenv: tests and the bench run in the serving one (`sys.executable`); training
    passes `.venv-serve/bin/python`. The KV cache defaults to 1 GiB (vLLM's CPU default of 4 GiB is more
    than a tiny model needs, and several servers may share a small machine) unless the environment sets it.
    """
    port = free_port()
    defaults = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "PYTHONUNBUFFERED": "1"}
    return ServerProcess(
        [python, "-m", "service", *args, "--host", HOST, "--port", str(port)],
        log_path,
        port=port,
        ready_path="/ready",
        env={**defaults, **(env or {})},
        name="service",
        ready_timeout=ready_timeout,
        stop_grace=stop_grace,
    )
