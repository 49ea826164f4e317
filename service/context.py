"""The application context: every long-lived object, built by the lifespan and typed.

`AppContext` exists from `create_app` on (settings, metrics, lifecycle); `LoadedModel` (engine, registry,
tokenizer) joins it once the model has loaded in a worker thread. Routes get them through the dependencies
in `deps.py`, never through `app.state` attributes of their own, and the drain lives here, once, for both
SIGTERM and the lifespan's shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.config import Settings
from service.engine_types import EngineClient
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """What serving a request needs once the model is up."""

    engine: EngineClient
    registry: ModelRegistry
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int

    @property
    def max_model_len(self) -> int:
        return self.engine.info.max_model_len


@dataclass(slots=True)
class AppContext:
    """Settings, metrics and lifecycle from the start; `model` once loaded (set once, by the lifespan)."""

    settings: Settings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    model: LoadedModel | None = None

    async def drain(self) -> None:
        """Stop admitting, let running requests finish for the drain timeout, abort the rest (idempotent)."""
        if self.lifecycle.draining:
            return
        if self.model is None:
            self.lifecycle.draining = True
            return
        await self.lifecycle.drain(self.settings.drain_timeout, self.model.engine.abort)

    async def shutdown(self) -> None:
        """Drain if nobody has, then stop the engine."""
        await self.drain()
        if self.model is not None:
            self.model.engine.shutdown()
