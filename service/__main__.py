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

from service.access.tenants import KeyRing
from service.app import create_app
from service.config import Settings, cli_flags
from service.errors import StartupError


def parse_args(argv: list[str]) -> dict:
    """Flags given on the command line only; pydantic-settings fills the rest from the environment."""
    parser = argparse.ArgumentParser(prog="python -m service", argument_default=argparse.SUPPRESS)
    cli_flags(parser)
    return vars(parser.parse_args(argv))


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
        """Stop: exit 2 for the operator's mistake (`StartupError`), 1 for anything else (the engine died, a bug)."""
        self.exit_code = 2 if isinstance(exc, StartupError) else 1
        self.should_exit = True


def log_start(settings: Settings, keyring: KeyRing | None) -> None:
    """What is served, how (HTTP or HTTPS, keys or none), and a flag from `vllm serve` that changes nothing."""
    log = logging.getLogger("service")
    mode = "without authentication (--no-auth)" if keyring is None else f"with {len(keyring.tenants)} API keys"
    scheme = "https" if settings.ssl_certfile is not None else "http"
    log.info("serving %s %s over %s", settings.model_name, mode, scheme)
    if settings.enable_lora and not (settings.lora_modules or settings.adapter_dir):
        log.warning("--enable-lora: no adapters to serve; pass --lora-modules or --adapter-dir")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(**parse_args(sys.argv[1:] if argv is None else argv))
    except ValidationError as exc:
        # One line per problem and never the input: it may hold API keys.
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or "configuration"
            message = error["msg"].removeprefix("Value error, ")
            print(f"invalid configuration: {where}: {message}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: DrainingServer | None = None
    try:
        app = create_app(settings, on_fatal=lambda exc: server.fail(exc) if server else None)
    except StartupError as exc:  # only the operator's mistakes: a bug of ours keeps its traceback, exit 1
        print(f"invalid configuration: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    log_start(settings, app.state.context.keyring)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server = DrainingServer(config)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
