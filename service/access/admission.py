"""Admission control: whether a request may start now, decided before any response byte.

Two kinds of limit, both checked in one synchronous step (so concurrent requests cannot both take the last
place) and both answered 429 with `Retry-After`, in the OpenAI envelope, within microseconds:

- the server's: sequences admitted (running in the engine plus waiting for a slot) at most
  `max_num_seqs + max_num_queued_requests`, and prompt tokens admitted but not yet started at most
  `max_queued_prompt_tokens`. vLLM's own queue cap is not used: in vLLM 0.32 it bounds running + waiting
  requests together and refuses with a 503 without `Retry-After`.
- the key's (`tenants.py`): concurrent requests, requests per minute, tokens per minute (token buckets that
  refill continuously; prompt tokens are charged on admission, completion tokens when the request ends).

A request that could never be admitted (more sequences than the server ever runs, a prompt larger than the
token budget, a model the key may not use) gets a 400/403 that says why, never a retryable status.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.access.tenants import Tenant
from service.errors import InvalidRequest, PermissionDenied, RateLimited
from service.metrics import ServiceMetrics

# Queue room beyond the running slots when `--max-num-queued-requests` is not given, as a share of
# `max_num_seqs`: enough to absorb a burst, small enough that a queued request starts within a fraction
# of one generation's time, so admitted requests keep their latency under overload.
DEFAULT_QUEUE_SHARE = 0.25
# Prompt tokens that may wait for prefill, in units of the engine's per-step token budget.
DEFAULT_QUEUED_PROMPT_STEPS = 4
# The `code` of each 429 and the `reason` label of `tsumugi_rejected_requests_total`.
REJECTION_REASONS = (
    "server_at_capacity",
    "concurrency_limit_exceeded",
    "rate_limit_exceeded",
    "tokens_limit_exceeded",
)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_sequences: int
    max_queued_prompt_tokens: int

    @classmethod
    def derive(
        cls,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        max_num_queued_requests: int | None,
        max_queued_prompt_tokens: int | None,
    ) -> AdmissionLimits:
        queued = max_num_queued_requests
        if queued is None:
            queued = max(1, math.ceil(max_num_seqs * DEFAULT_QUEUE_SHARE))
        tokens = max_queued_prompt_tokens or max(max_model_len, DEFAULT_QUEUED_PROMPT_STEPS * max_num_batched_tokens)
        return cls(max_sequences=max_num_seqs + queued, max_queued_prompt_tokens=tokens)


class TokenBucket:
    """`per_minute` units, refilled continuously; the level may go below zero (charges made after the fact)."""

    __slots__ = ("_clock", "_rate", "_updated", "capacity", "level")

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._updated = clock()

    def seconds_until(self, amount: float) -> float:
        """0 when `amount` can be taken now, else how long until it can."""
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self._rate)
        self._updated = now
        return 0.0 if self.level >= amount else (amount - self.level) / self._rate

    def take(self, amount: float) -> None:
        self.level -= amount


class _TenantState:
    __slots__ = ("in_flight", "requests", "tokens")

    def __init__(self, tenant: Tenant, clock: Callable[[], float]) -> None:
        self.in_flight = 0
        self.requests = TokenBucket(tenant.requests_per_minute, clock) if tenant.requests_per_minute else None
        self.tokens = TokenBucket(tenant.tokens_per_minute, clock) if tenant.tokens_per_minute else None


class Admission:
    """The server's and every key's counters; `admit` hands out a `Ticket` that gives the place back."""

    def __init__(
        self, limits: AdmissionLimits, metrics: ServiceMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._metrics = metrics
        self._clock = clock
        self._tenants: dict[str, _TenantState] = {}
        self._metrics.queue_depth.set(0)
        self.num_sequences = 0
        self.num_queued_prompt_tokens = 0
        self.num_queued = 0

    def admit(self, tenant: Tenant, model: str, num_sequences: int, num_prompt_tokens: int) -> Ticket:
        """A ticket for a request of `num_sequences` sequences and `num_prompt_tokens` prompt tokens, or the
        error that says why not (raised before anything is counted)."""
        self._check_fits(tenant, model, num_sequences, num_prompt_tokens)
        state = self._tenants.get(tenant.name)
        if state is None:
            state = self._tenants[tenant.name] = _TenantState(tenant, self._clock)
        refusal = self._server_refusal(num_sequences, num_prompt_tokens) or _tenant_refusal(
            tenant, state, num_prompt_tokens
        )
        if refusal is not None:
            self._metrics.rejected.labels(refusal.code, tenant.name).inc()
            raise refusal
        state.in_flight += 1
        if state.requests is not None:
            state.requests.take(1)
        if state.tokens is not None:
            state.tokens.take(num_prompt_tokens)
        self.num_sequences += num_sequences
        self.num_queued_prompt_tokens += num_prompt_tokens
        self.num_queued += 1
        self._metrics.queue_depth.set(self.num_queued)
        return Ticket(self, state, num_sequences, num_prompt_tokens)

    def _check_fits(self, tenant: Tenant, model: str, num_sequences: int, num_prompt_tokens: int) -> None:
        if not tenant.may_use(model):
            raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")
        if num_sequences > self.limits.max_sequences:
            raise InvalidRequest(
                f"This request needs {num_sequences} sequences (n times the number of prompts); this server "
                f"runs at most {self.limits.max_sequences} at once.",
                param="n",
            )
        if num_prompt_tokens > self.limits.max_queued_prompt_tokens:
            raise InvalidRequest(
                f"The prompts total {num_prompt_tokens} tokens; this server admits at most "
                f"{self.limits.max_queued_prompt_tokens} prompt tokens at once.",
                param="prompt",
            )
        if tenant.tokens_per_minute is not None and num_prompt_tokens > tenant.tokens_per_minute:
            raise InvalidRequest(
                f"The prompts total {num_prompt_tokens} tokens, more than this key's limit of "
                f"{tenant.tokens_per_minute} tokens per minute.",
                param="prompt",
            )

    def _server_refusal(self, num_sequences: int, num_prompt_tokens: int) -> RateLimited | None:
        if self.num_sequences + num_sequences > self.limits.max_sequences:
            return RateLimited("The server is at capacity; retry shortly.", retry_after=1, code="server_at_capacity")
        if self.num_queued_prompt_tokens + num_prompt_tokens > self.limits.max_queued_prompt_tokens:
            return RateLimited(
                "The server has too many prompt tokens waiting; retry shortly.",
                retry_after=1,
                code="server_at_capacity",
            )
        return None


def _tenant_refusal(tenant: Tenant, state: _TenantState, num_prompt_tokens: int) -> RateLimited | None:
    if tenant.max_concurrent_requests is not None and state.in_flight >= tenant.max_concurrent_requests:
        return RateLimited(
            f"This key already has {state.in_flight} requests running (its limit); retry when one ends.",
            retry_after=1,
            code="concurrency_limit_exceeded",
        )
    if state.requests is not None:
        wait = state.requests.seconds_until(1)
        if wait > 0:
            return RateLimited(
                f"This key's limit of {tenant.requests_per_minute} requests per minute is reached.",
                retry_after=math.ceil(wait),
                code="rate_limit_exceeded",
            )
    if state.tokens is not None:
        wait = state.tokens.seconds_until(num_prompt_tokens)
        if wait > 0:
            return RateLimited(
                f"This key's limit of {tenant.tokens_per_minute} tokens per minute is reached.",
                retry_after=math.ceil(wait),
                code="tokens_limit_exceeded",
            )
    return None


class Ticket:
    """One admitted request's place: `started()` when its first step arrives, `release()` when it ends."""

    __slots__ = ("_admission", "_num_prompt_tokens", "_num_sequences", "_queued", "_released", "_state", "_t0")

    def __init__(self, admission: Admission, state: _TenantState, num_sequences: int, num_prompt_tokens: int) -> None:
        self._admission = admission
        self._state = state
        self._num_sequences = num_sequences
        self._num_prompt_tokens = num_prompt_tokens
        self._queued = True
        self._released = False
        self._t0 = time.perf_counter()

    def started(self) -> None:
        """The engine produced the first step: the prompt is no longer waiting."""
        if self._queued:
            self._leave_queue()
            self._admission._metrics.queue_wait.observe(time.perf_counter() - self._t0)

    def release(self, num_completion_tokens: int) -> None:
        """The request ended (however): give back its place and charge its completion tokens to the key."""
        if self._released:
            return
        self._released = True
        if self._queued:
            self._leave_queue()
        self._admission.num_sequences -= self._num_sequences
        self._state.in_flight -= 1
        if self._state.tokens is not None:
            self._state.tokens.take(num_completion_tokens)

    def _leave_queue(self) -> None:
        self._queued = False
        admission = self._admission
        admission.num_queued_prompt_tokens -= self._num_prompt_tokens
        admission.num_queued -= 1
        admission._metrics.queue_depth.set(admission.num_queued)
