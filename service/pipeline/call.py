"""One API call as the pipeline sees it: who is calling, its deadline, and what it amounted to.

The middleware makes the `CallRecord` when the request arrives (id, key) and reads its `outcome()` once, when
the request ends, for the metrics and the access log. In between the pipeline adds exactly two facts, each
through one method: which model the call resolved to (`resolve`), and the generation that runs it (`track`),
whose own counters (tokens, time to first token) the outcome reads at the end. Nothing else writes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.access.tenants import ANONYMOUS, Tenant

if TYPE_CHECKING:
    from service.adapters.registry import ModelRegistry, ServedModel

UNKNOWN_MODEL = "unknown"  # a call that never resolved a model (bounded label values: never the client's string)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished call amounted to, as the access log and the metrics report it."""

    model: str = UNKNOWN_MODEL
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    ttft_s: float | None = None


class Tracked(Protocol):
    """A running generation, as far as the call's outcome is concerned."""

    def outcome(self, model: str) -> Outcome: ...


class CallRecord:
    """The middleware's record of one request; the pipeline tells it the model and the generation."""

    __slots__ = ("_generation", "_model", "request_id", "tenant")

    def __init__(self, request_id: str, tenant: Tenant = ANONYMOUS) -> None:
        self.request_id = request_id
        self.tenant = tenant
        self._model = UNKNOWN_MODEL
        self._generation: Tracked | None = None

    def resolve(self, registry: ModelRegistry, name: str) -> ServedModel:
        """The base model or adapter `name` names (404 if none), remembered as this call's model."""
        served = registry.resolve(name)
        self._model = served.name
        return served

    def track(self, generation: Tracked) -> None:
        """The generation running this call: its tokens and timings become the outcome."""
        self._generation = generation

    def outcome(self) -> Outcome:
        if self._generation is None:
            return Outcome(self._model)
        return self._generation.outcome(self._model)


@dataclass(frozen=True, slots=True)
class Call:
    """This call as the generation needs it: its record and its time limit (`--request-timeout`, lowered by an
    `X-Request-Timeout` header)."""

    record: CallRecord
    timeout: float
