"""`python -m service`: flags named like `vllm serve`, each also a `TSUMUGI_*` environment variable.

uvicorn's SIGTERM handling stops listening at once; a model server must instead keep answering (503 for new
requests, the rest of running streams) while it drains, so `DrainingServer` runs the drain first and only
then lets uvicorn shut down, exiting 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings


def parse_args(argv: list[str]) -> dict:
    """Flags given on the command line only; pydantic-settings fills the rest from the environment."""
    p = argparse.ArgumentParser(prog="python -m service", argument_default=argparse.SUPPRESS)
    p.add_argument("--model", help="model directory or hub id (default: the converted SmolLM2)")
    p.add_argument("--served-model-name")
    p.add_argument("--tokenizer")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--lora-modules", nargs="+", metavar="NAME=PATH")
    p.add_argument("--max-loras", type=int)
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument(
        "--kv-cache-memory-bytes",
        metavar="SIZE",
        help="KV-cache size (4GiB, 512MiB, bytes); default on CPU: derived from the model, at most 4 GiB",
    )
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--max-num-queued-requests", type=int, help="engine queue cap; beyond it requests get 503")
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--seed", type=int)
    p.add_argument("--api-key", dest="api_keys", action="append", help="repeatable")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--drain-timeout", type=float, help="seconds running requests get after SIGTERM")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return vars(p.parse_args(argv))


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM turned into drain-then-exit (a second signal exits at once)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.exit_code = 0

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))
            return
        super().handle_exit(sig, frame)

    async def _drain_then_exit(self) -> None:
        await self.config.app.state.context.drain()
        self.should_exit = True

    def fail(self, exc: BaseException) -> None:
        self.exit_code = 1
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(**parse_args(sys.argv[1:] if argv is None else argv))
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: DrainingServer | None = None
    app = create_app(settings, on_load_error=lambda exc: server.fail(exc) if server else None)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = DrainingServer(config)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
