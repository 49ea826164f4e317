"""The engine: the only module that imports vLLM, so a vLLM upgrade touches this file alone.

`Engine` wraps vLLM's `AsyncLLM` in-process. It takes token ids and our `GenerationParams` and gives back
`ChoiceDelta`s (types in `engine_types.py`): per choice, the new text and tokens since the last delta,
straight from vLLM's DELTA output mode, so the stream path never diffs cumulative text.

The null adapter. vLLM 0.32's CPU LoRA kernels (`lora/ops/torch_ops/lora_ops.py`) index the adapter-slot
tensor with the "no LoRA" index -1 as a Python index, so base-model requests batched with adapter requests
get the *last* slot's adapter applied; only an all-base batch skips LoRA. On CPU, when adapters are served,
base-model requests therefore go through a zero adapter (one module, B = 0, so x·A·B adds exactly 0) and
never carry index -1. It takes one extra slot, so `--max-loras N` still lets N real adapters share batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import xgrammar
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from service.config import Settings
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
GiB = 1024**3
CPU_KV_CACHE_CAP = 4 * GiB
CPU_KV_CACHE_SEQUENCES = 16


def resolve_dtype(settings: Settings, on_cpu: bool) -> str:
    """The activation dtype to run: `--dtype auto` picks one the model's kernels support on this device.

    On CPU, plain models run in float32 (vLLM 0.32's CPU bf16 path gave wrong greedy text on SmolLM2-135M
    where fp32 matches transformers) and 4-bit weight-only models (AWQ, GPTQ, compressed-tensors W4A16, what
    `training quantize` writes) in bfloat16, the only activation dtype of vLLM's CPU W4A16 kernel: float32
    crashes the engine at start-up (`"cpu_gemm_wna16" not implemented for 'Float'`). On GPU, auto is the
    model's own dtype. An explicit dtype those kernels cannot run is refused here, naming the flag."""
    w4a16 = on_cpu and is_weight_only_4bit(Path(settings.model))
    if settings.dtype == "auto":
        if w4a16:
            return "bfloat16"
        return "float32" if on_cpu else "auto"
    if w4a16 and settings.dtype != "bfloat16":
        raise ValueError(
            f"--dtype {settings.dtype}: this model has 4-bit weight-only quantization, whose CPU kernel runs "
            "only in bfloat16; use --dtype auto or bfloat16"
        )
    return settings.dtype


def is_weight_only_4bit(model_dir: Path) -> bool:
    """Whether the model directory's config declares 4-bit weights with unquantized activations."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # a hub id, or no readable config: vLLM reports what is wrong
    quantization = config.get("quantization_config") or {}
    method = quantization.get("quant_method")
    if method in ("awq", "gptq"):
        return quantization.get("bits", quantization.get("w_bit", 4)) == 4
    if method == "compressed-tensors":
        groups = (quantization.get("config_groups") or {}).values()
        return any(
            (group.get("weights") or {}).get("num_bits") == 4 and not group.get("input_activations") for group in groups
        )
    return False


def compact_json_grammar(schema: dict[str, Any]) -> str:
    """The grammar of JSON following `schema` with no optional whitespace, for forced tool calls.

    JSON schemas allow whitespace between tokens, and a model that puts its probability there (a fine-tune
    gone wrong, random weights) pads a call until `max_tokens` cuts it. vLLM 0.32's xgrammar backend takes
    "no whitespace" only as an engine-wide setting, so the schema is turned into a grammar here, per request
    (well under a millisecond; vLLM caches compiled grammars by their text)."""
    try:
        grammar = xgrammar.Grammar.from_json_schema(schema, any_whitespace=False, separators=(",", ":"))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"tools: a function's parameters cannot be used as a schema: {exc}", param="tools"
        ) from exc
    return str(grammar)


MAX_CONSTRAINED_CALLS = 4


def answer_or_calls_grammar(answer: dict[str, Any], call: dict[str, Any]) -> str:
    """JSON following `answer`, or 1 to `MAX_CONSTRAINED_CALLS` default-format `<tool_call>` blocks each
    holding a compact call following `call` (see `tsumugi/tool_prompt.py` for the format)."""
    try:
        answer_grammar = xgrammar.Grammar.from_json_schema(answer)
        call_grammar = xgrammar.Grammar.from_json_schema(call, any_whitespace=False, separators=(", ", ": "))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"response_format: cannot be used as a schema: {exc}", param="response_format") from exc
    block = xgrammar.Grammar.concat(
        xgrammar.Grammar.from_ebnf('root ::= "<tool_call>\\n"'),
        call_grammar,
        xgrammar.Grammar.from_ebnf('root ::= "\\n</tool_call>"'),
    )
    separator = xgrammar.Grammar.from_ebnf('root ::= "\\n"')
    calls = [block]
    for _ in range(MAX_CONSTRAINED_CALLS - 1):
        calls.append(xgrammar.Grammar.concat(calls[-1], separator, block))
    return str(xgrammar.Grammar.union(answer_grammar, *calls))


def write_null_adapter_for_model(hf_config: Any, out_dir: Path) -> Path:
    """A zero LoRA adapter on the first layer's `q_proj`, shaped from the model's config: the null adapter when
    no adapter is there to copy a shape from (runtime adapters, none at start). Llama-style module names
    (Llama, Qwen, Mistral, SmolLM2)."""
    import torch
    from safetensors.torch import save_file

    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": torch.zeros(1, hidden),
        f"{prefix}.lora_B.weight": torch.zeros(hf_config.num_attention_heads * head_dim, 1),
    }
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(config | {"bias": "none", "lora_dropout": 0.0}))
    return out_dir


def write_null_adapter(template_adapter: Path, out_dir: Path) -> Path:
    """Write a zero LoRA adapter shaped like one module of `template_adapter` (see the module docstring)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((template_adapter / "adapter_config.json").read_text(encoding="utf-8"))
    with safe_open(str(template_adapter / "adapter_model.safetensors"), framework="pt") as weights:
        key_a = next(k for k in weights.keys() if ".lora_A." in k)  # noqa: SIM118 (safe_open has no __iter__)
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        tensors = {
            key_a: weights.get_tensor(key_a)[:1].contiguous().zero_(),
            key_b: weights.get_tensor(key_b)[:, :1].contiguous().zero_(),
        }
    module = key_a.split(".lora_A.")[0].rsplit(".", 1)[-1]
    null_config = {key: config[key] for key in ("base_model_name_or_path", "task_type", "peft_type") if key in config}
    null_config.update(r=1, lora_alpha=1, target_modules=[module], bias="none", lora_dropout=0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(null_config), encoding="utf-8")
    return out_dir


def cpu_kv_cache_bytes(args: AsyncEngineArgs) -> int:
    """The CPU KV-cache size when none is given: room for `CPU_KV_CACHE_SEQUENCES` full-length sequences, at
    most `CPU_KV_CACHE_CAP` but never less than one full-length sequence (vLLM refuses to start without that).

    Without an explicit size, vLLM's CPU worker reserves `gpu_memory_utilization` (0.9) of the NUMA node's
    memory and refuses to start unless that much is free: 17 GiB for a 135M model, and no start at all on a
    machine where other programs hold a few GiB."""
    model = args.create_model_config()
    per_token = 2 * model.get_total_num_hidden_layers() * model.get_total_num_kv_heads() * model.get_head_size()
    one_sequence = per_token * model.dtype.itemsize * model.max_model_len
    return max(one_sequence, min(CPU_KV_CACHE_CAP, one_sequence * CPU_KV_CACHE_SEQUENCES))


def runtime_adapters(settings: Settings) -> bool:
    """Adapters may be added while the service runs (`--adapter-dir`): LoRA is on even with none at start."""
    return settings.adapter_dir is not None


def build_engine_args(settings: Settings, num_adapters: int, use_null_adapter: bool) -> AsyncEngineArgs:
    args = _engine_args(settings, num_adapters, use_null_adapter)
    legacy_size = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")  # vLLM's own variable overrides any size given
    if args.kv_cache_memory_bytes is None and current_platform.is_cpu() and not legacy_size:
        args.kv_cache_memory_bytes = cpu_kv_cache_bytes(args)
        logger.info(
            "KV cache on CPU: %.2f GiB (set --kv-cache-memory-bytes to change)", args.kv_cache_memory_bytes / GiB
        )
    return args


def _engine_args(settings: Settings, num_adapters: int, use_null_adapter: bool) -> AsyncEngineArgs:
    return AsyncEngineArgs(
        model=settings.model,
        served_model_name=settings.model_name,
        tokenizer=settings.tokenizer,
        dtype=resolve_dtype(settings, current_platform.is_cpu()),
        quantization=settings.quantization,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        tensor_parallel_size=settings.tensor_parallel_size,
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        enable_lora=num_adapters > 0 or runtime_adapters(settings),
        max_loras=settings.max_loras + (1 if use_null_adapter else 0),
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=cpu_loras(settings, num_adapters, use_null_adapter),
        generation_config="auto",
    )


def cpu_loras(settings: Settings, num_adapters: int, use_null_adapter: bool) -> int | None:
    """Adapters vLLM keeps loaded in memory (its LRU beyond the slots): `--max-cpu-loras`, else every adapter
    given at start; always more than the slots (vLLM requires at least as many, and the null adapter takes one)."""
    if not (num_adapters or runtime_adapters(settings)):
        return None
    slots = settings.max_loras + (1 if use_null_adapter else 0)
    return max(settings.max_cpu_loras or num_adapters + 1, slots + 1)


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
        llm = AsyncLLM.from_engine_args(args, usage_context=UsageContext.OPENAI_API_SERVER)
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
        except VLLMValidationError as exc:  # our own checks (protocol.py, sampling.py) should come first
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
                except (VLLMClientError, ValueError, TypeError) as exc:
                    # vLLM's request validation (prompt, schema, sampling values) raises these.
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
