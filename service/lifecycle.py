"""Readiness and graceful drain: what `/ready` reports and what SIGTERM does.

On SIGTERM the service stops being ready at once (so the load balancer stops sending traffic), answers new
requests with a 503 in the OpenAI envelope, and lets running requests finish for up to the drain timeout.
Requests still running then are aborted in the engine and their streams end with a final error event, never
a cut connection. Only then does the HTTP server stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


class Lifecycle:
    """Loading → ready → draining, plus the engine ids of the requests in flight."""

    def __init__(self) -> None:
        self.loaded = False
        self.draining = False
        self.load_error: str | None = None
        self.fatal: str | None = None  # the engine died: unhealthy until the process exits and restarts
        self._active: dict[str, list[str]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and self.fatal is None

    def admit(self) -> None:
        """Refuse new work unless the model is loaded and the service is not shutting down."""
        if self.fatal is not None:
            raise ServiceUnavailable(f"{self.fatal}; this replica is restarting, retry on another.")
        if self.draining:
            raise ServiceUnavailable("The server is shutting down; retry on another replica.")
        if not self.loaded:
            raise ServiceUnavailable(self.load_error or "The model is still loading; retry shortly.")

    def started(self, request_id: str, engine_ids: list[str]) -> None:
        self._active[request_id] = engine_ids
        self._idle.clear()

    def finished(self, request_id: str) -> None:
        self._active.pop(request_id, None)
        if not self._active:
            self._idle.set()

    @property
    def num_active(self) -> int:
        return len(self._active)

    def engine_ids(self) -> list[str]:
        return [engine_id for ids in self._active.values() for engine_id in ids]

    async def drain(self, drain_timeout: float, abort: Callable[[list[str]], Awaitable[None]]) -> None:
        """Stop admitting, wait up to `drain_timeout` for running requests, then abort the rest."""
        self.draining = True
        if self.fatal is not None:
            drain_timeout = 0.0  # nothing can finish on a dead engine: end the streams now
        logger.info("draining %d running requests (timeout %.0f s)", len(self._active), drain_timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
            return
        except TimeoutError:
            pass
        logger.warning("drain timeout: aborting %d requests", len(self._active))
        try:
            await abort(self.engine_ids())
        except Exception as exc:  # a dead engine cannot abort; its requests end with their own errors
            logger.warning("abort during drain failed: %s", exc)
        # Aborted streams still write their final error event; give them a moment to flush.
        try:
            await asyncio.wait_for(self._idle.wait(), 5.0)
        except TimeoutError:
            logger.error("%d requests did not finish after abort", len(self._active))
