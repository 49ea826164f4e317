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

from service.access.admission import Admission, AdmissionLimits
from service.access.tenants import KeyRing
from service.adapters.catalogue import AdapterCatalogue
from service.adapters.registry import ModelRegistry
from service.config import Settings
from service.engine.types import EngineClient
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.pipeline.tools import CallParsing

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
    max_token_chars: int = 64  # the longest vocabulary entry, in characters (see `max_prompt_chars`)
    tool_parsing: CallParsing | None = None  # set with --enable-auto-tool-choice

    @property
    def max_model_len(self) -> int:
        return self.engine.info.max_model_len

    @property
    def max_prompt_chars(self) -> int:
        """More characters than this cannot fit the context window whatever they say (no token is longer
        than `max_token_chars`), so longer prompts are refused before the tokenizer spends time on them."""
        return self.max_model_len * self.max_token_chars


@dataclass(slots=True)
class AppContext:
    """Settings, metrics and lifecycle from the start; `model` once loaded (set once, by the lifespan)."""

    settings: Settings
    keyring: KeyRing | None = None  # None: --no-auth
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    model: LoadedModel | None = None
    admission: Admission | None = None  # sized from the engine once it is up
    adapters: AdapterCatalogue | None = None  # the runtime adapter catalogue, once the model is up

    def publish(self, model: LoadedModel) -> None:
        """The model is up: size admission control from the engine and start admitting."""
        info, s = model.engine.info, self.settings
        limits = AdmissionLimits.derive(
            info.max_num_seqs,
            info.max_num_batched_tokens,
            info.max_model_len,
            s.max_num_queued_requests,
            s.max_queued_prompt_tokens,
        )
        self.admission = Admission(limits, self.metrics)
        self.adapters = AdapterCatalogue(model.registry, model.engine, self.metrics, s.adapter_dir, s.max_lora_rank)
        self.metrics.start_models_at_zero([served.name for served in model.registry])
        self.model = model
        self.lifecycle.loaded = True
        logger.info(
            "admission: at most %d sequences (running + queued), %d queued prompt tokens",
            limits.max_sequences,
            limits.max_queued_prompt_tokens,
        )

    def require_admission(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("admission control is set up when the model is published")
        return self.admission

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
