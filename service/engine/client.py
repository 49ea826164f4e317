"""The engine client: vLLM's `AsyncLLM` behind the few calls the service needs.

`Engine` wraps vLLM's `AsyncLLM` in-process. It takes token ids and our `GenerationParams` and gives back
`ChoiceDelta`s (types in `types.py`): per choice, the new text and tokens since the last delta, straight
from vLLM's DELTA output mode, so the stream path never diffs cumulative text. Errors are told apart by
origin here: vLLM's validation of a request is the client's (400), capacity is a 503, anything else the
engine raises is an engine failure (500).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from vllm import SamplingParams
from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from service.config import Settings
from service.engine.args import build_engine_args, runtime_adapters
from service.engine.grammars import answer_or_calls_grammar, compact_json_grammar
from service.engine.null_adapter import write_null_adapter, write_null_adapter_for_model
from service.engine.stats import ModelServerStatLogger, serve_clients
from service.engine.types import (
    NULL_ADAPTER_NAME,
    AdapterHandle,
    ChoiceDelta,
    EngineInfo,
    EngineStep,
    GenerationParams,
    TokenLogprob,
)
from service.errors import AdapterRejected, EngineFailure, InvalidRequest, Overloaded, ServiceUnavailable

logger = logging.getLogger(__name__)
# GenerationParams fields passed to SamplingParams under the same name; the rest are mapped below.
_MAPPED_APART = ("stop", "json_schema", "json_object", "json_schema_source", "tool_call_schema")
_SAMPLING_FIELDS = tuple(f.name for f in fields(GenerationParams) if f.name not in _MAPPED_APART)
# Fields whose None means "the model's generation_config value, else vLLM's own default".
_MODEL_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


class Engine:
    """vLLM's AsyncLLM behind the few calls the routes need."""

    def __init__(self, llm: AsyncLLM, info: EngineInfo, tempdir: tempfile.TemporaryDirectory | None) -> None:
        self._llm = llm
        self.info = info
        self._tempdir = tempdir

    @classmethod
    def start(cls, settings: Settings, adapter_paths: list[Path], null_adapter_id: int) -> Engine:
        """Build the engine (blocking: loads weights, profiles memory, spawns the engine-core process).
        `null_adapter_id` is the engine id the registry set aside for the null adapter."""
        use_null_adapter = (bool(adapter_paths) or runtime_adapters(settings)) and current_platform.is_cpu()
        args = build_engine_args(settings, len(adapter_paths), use_null_adapter)
        # The API-server usage context picks vLLM's serving defaults (batch sizes, max_num_seqs), as `vllm serve`.
        # Its Prometheus series are the ones routers read, with adapters named as clients name them (stats.py).
        llm = AsyncLLM.from_engine_args(
            args, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=[ModelServerStatLogger]
        )
        serve_clients(llm, settings.max_loras)
        model_config = llm.model_config
        tempdir = None
        null_adapter = None
        if use_null_adapter:
            tempdir = tempfile.TemporaryDirectory(prefix="tsumugi-null-adapter-")
            if adapter_paths:
                path = write_null_adapter(adapter_paths[0], Path(tempdir.name))
            else:
                path = write_null_adapter_for_model(model_config.hf_config, Path(tempdir.name))
            null_adapter = AdapterHandle(NULL_ADAPTER_NAME, lora_id=null_adapter_id, path=str(path))
        scheduler = llm.vllm_config.scheduler_config
        info = EngineInfo(
            max_model_len=model_config.max_model_len,
            max_num_seqs=scheduler.max_num_seqs,
            max_num_batched_tokens=scheduler.max_num_batched_tokens,
            default_sampling=model_config.get_diff_sampling_param(),
            null_adapter=null_adapter,
        )
        return cls(llm, info, tempdir)

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        """Load an adapter into the engine now (it validates before it evicts anything), so a broken one is
        refused here rather than failing inside a batch, where vLLM would end the engine."""
        try:
            await self._llm.add_lora(LoRARequest(adapter.name, adapter.lora_id, adapter.path))
        except EngineDeadError:
            raise
        except Exception as exc:  # vLLM returns the worker's error as a plain Exception with its message
            raise AdapterRejected(f"The engine could not load the adapter: {exc}", param="path") from exc

    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        """Unload a version no request uses any more (the catalogue's leases say when)."""
        await self._llm.remove_lora(adapter.lora_id)

    async def resident_adapter_ids(self) -> set[int]:
        """vLLM's CPU-side LoRA cache (`--max-cpu-loras`, least recently used first out)."""
        return set(await self._llm.list_loras())

    def lora_request(self, adapter: AdapterHandle | None) -> LoRARequest | None:
        adapter = adapter or self.info.null_adapter
        if adapter is None:
            return None
        return LoRARequest(adapter.name, adapter.lora_id, adapter.path)

    def sampling_params(self, params: GenerationParams) -> SamplingParams:
        values = {name: getattr(params, name) for name in _SAMPLING_FIELDS}
        for name, fallback in _MODEL_DEFAULTS.items():
            if values[name] is None:
                values[name] = self.info.default_sampling.get(name, fallback)
        structured = None
        if params.tool_call_schema is not None:
            answer = params.json_schema or {"type": "object"}
            structured = StructuredOutputsParams(grammar=answer_or_calls_grammar(answer, params.tool_call_schema))
        elif params.json_schema is not None:
            if params.json_schema_source == "tools":
                structured = StructuredOutputsParams(grammar=compact_json_grammar(params.json_schema))
            else:
                structured = StructuredOutputsParams(json=params.json_schema)
        elif params.json_object:
            structured = StructuredOutputsParams(json_object=True)
        try:
            return SamplingParams(
                **values,
                stop=list(params.stop) or None,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA,
            )
        except VLLMValidationError as exc:  # our own checks (api/schemas, pipeline/sampling.py) come first
            raise InvalidRequest(exc.args[0] if exc.args else str(exc), param=exc.parameter) from exc
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from exc

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: GenerationParams,
        adapter: AdapterHandle | None,
    ) -> AsyncIterator[EngineStep]:
        """Stream engine steps; closing the iterator early aborts the request in the engine.

        Errors are told apart by origin: only what vLLM raises while taking or running the request is mapped
        to a client (400) or capacity (503) error; a bug in our own conversion below is not caught here and
        reaches the edge as a 500 with a request id, never blamed on the client."""
        sampling = self.sampling_params(params)
        want_logprobs = params.logprobs is not None
        structured = params.json_schema is not None or params.json_object
        num_tokens = 0
        stream = self._llm.generate(
            tokens_input(prompt_token_ids),
            sampling,
            request_id,
            lora_request=self.lora_request(adapter),
        )
        try:
            while True:
                try:
                    output = await anext(stream)
                except StopAsyncIteration:
                    return
                except (VLLMClientError, ValueError) as exc:
                    # vLLM's request validation raises its own client errors (prompt length) and, for values it
                    # checks deeper down (a schema its grammar backend refuses), ValueError. A TypeError there is a
                    # wrong argument of ours, so it stays a 500 (below), never the client's 400.
                    raise InvalidRequest(str(exc)) from exc
                except GracefulHTTPError as exc:
                    raise Overloaded(exc.message) from exc
                except EngineDeadError as exc:
                    raise ServiceUnavailable("The engine process died; this replica is restarting.") from exc
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise EngineFailure(f"engine error: {type(exc).__name__}: {exc}") from exc
                if any(choice.finish_reason == "error" for choice in output.outputs):
                    raise _request_error(params.json_schema_source if structured else None, num_tokens)
                deltas = [_delta(choice, want_logprobs) for choice in output.outputs]
                num_tokens += sum(len(choice.token_ids) for choice in output.outputs)
                yield EngineStep(deltas, len(output.prompt_token_ids or ()), output.finished)
        finally:
            await stream.aclose()

    async def abort(self, request_ids: list[str]) -> None:
        await self._llm.abort(request_ids)

    async def check_health(self) -> None:
        await self._llm.check_health()

    @property
    def errored(self) -> bool:
        return self._llm.errored

    async def log_stats(self) -> None:
        await self._llm.do_log_stats()

    def shutdown(self) -> None:
        self._llm.shutdown()
        if self._tempdir is not None:
            self._tempdir.cleanup()


def _request_error(schema_source: str | None, num_tokens: int) -> InvalidRequest | EngineFailure:
    """What a request that the engine finished with "error" (not an OpenAI finish reason) amounts to.

    vLLM compiles a structured-output grammar in the engine process, after accepting the request; a schema
    its backend cannot compile (a `pattern` too large, say) ends the request that way before any token."""
    if schema_source is not None and num_tokens == 0:
        return InvalidRequest(
            f"{schema_source}: the structured-output backend could not compile this schema "
            "(see the server log for its message); simplify the schema, for example its patterns.",
            param=schema_source,
        )
    return EngineFailure("the engine ended the request with an error")


def _delta(choice: Any, want_logprobs: bool) -> ChoiceDelta:
    logprobs = None
    if want_logprobs and choice.logprobs is not None:
        logprobs = []
        for token_id, candidates in zip(choice.token_ids, choice.logprobs, strict=False):
            chosen = candidates[token_id]
            top = sorted(candidates.values(), key=lambda lp: lp.rank or 0)
            logprobs.append(
                TokenLogprob(
                    token=chosen.decoded_token or "",
                    logprob=max(chosen.logprob, -9999.0),
                    top=tuple((lp.decoded_token or "", max(lp.logprob, -9999.0)) for lp in top),
                )
            )
    return ChoiceDelta(
        index=choice.index,
        text=choice.text,
        num_new_tokens=len(choice.token_ids),
        finish_reason=None if choice.finish_reason == "abort" else choice.finish_reason,
        logprobs=logprobs,
        token_ids=choice.token_ids,
    )
