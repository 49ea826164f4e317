"""GuideLLM's OpenAI HTTP backend, plus the arrival time of every token-bearing stream chunk.

`vllm bench serve` defines inter-token latency (ITL) as the gap between consecutive streamed chunks, pooled
over all requests, and reports its percentiles. GuideLLM 0.8.1 keeps only the first and last token times and
the chunk count of a request (its "ITL" is a per-request mean, vLLM's TPOT), so the pooled gaps cannot be
rebuilt from its report. This backend records each chunk's arrival in the request's `response_metrics`, which
GuideLLM's JSON report keeps, and changes nothing else: same requests, same handlers, same timings.

Imported by `deploy.loadtest.guidellm_run` before GuideLLM starts, and by GuideLLM's worker processes when
they unpickle the backend (they are spawned, so the registration below runs in each).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from guidellm.backends import Backend
from guidellm.backends.openai import OpenAIHTTPBackend
from guidellm.benchmark import BenchmarkArgs, BenchmarkScenario
from guidellm.schemas import GenerationRequest, GenerationRequestArguments, GenerationResponse
from guidellm.schemas.backends import BackendArgs, OpenAIHTTPBackendArgs
from pydantic import Field

from deploy.loadtest import TOKEN_CHUNK_TIMES, TOKEN_TIMES_BACKEND


@BackendArgs.register(TOKEN_TIMES_BACKEND)
class TokenTimesBackendArgs(OpenAIHTTPBackendArgs):
    """OpenAIHTTPBackendArgs under our own kind, so a scenario file can select the backend below."""

    kind: Literal["openai_http_token_times"] = Field(  # type: ignore[assignment]  (= TOKEN_TIMES_BACKEND)
        default=TOKEN_TIMES_BACKEND,
        description="GuideLLM's openai_http backend that also records token-chunk arrival times.",
    )


class TokenChunkClock:
    """One request's GuideLLM stream handler, stamping every line it counts as carrying tokens.

    GuideLLM's backend calls `add_streaming_line` for each SSE line and counts the line as a token iteration
    when it returns a positive number (content, reasoning or tool-call deltas); exactly those lines are
    stamped, so the times agree with GuideLLM's own first/last token times and iteration count.
    """

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self.times: list[float] = []

    def add_streaming_line(self, line: str) -> int | None:
        arrived = time.time()
        iterations = self._handler.add_streaming_line(line)
        if iterations is not None and iterations > 0:
            self.times.append(arrived)
        return iterations

    def compile_streaming(
        self, request: GenerationRequest, arguments: GenerationRequestArguments
    ) -> GenerationResponse:
        response = self._handler.compile_streaming(request, arguments)
        response.response_metrics = {**(response.response_metrics or {}), TOKEN_CHUNK_TIMES: list(self.times)}
        return response

    def __getattr__(self, name: str) -> Any:
        """Everything else (format, post_validation, last_iteration_had_content, ...) is the handler's."""
        return getattr(self._handler, name)


@Backend.register(TOKEN_TIMES_BACKEND)
class TokenTimesBackend(OpenAIHTTPBackend):
    """OpenAIHTTPBackend whose per-request handler is wrapped in a TokenChunkClock."""

    async def _prepare_resolve_request(
        self, request: GenerationRequest, history: Any = None
    ) -> tuple[Any, GenerationRequestArguments, dict[str, Any]]:
        handler, arguments, request_kwargs = await super()._prepare_resolve_request(request, history)
        return TokenChunkClock(handler), arguments, request_kwargs


# GuideLLM's own modules rebuild these after registering their kinds (guidellm/benchmark/__init__.py); a
# scenario naming our kind validates only after the same rebuild.
BenchmarkArgs.reload_schema()
BenchmarkScenario.reload_schema()
