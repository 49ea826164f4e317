"""vLLM's engine arguments from our `Settings`: dtype, KV-cache size on CPU, LoRA slots and memory.

`vllm serve` derives these from its flags; we derive them from `Settings` (same flag names), adding what a CPU
box needs: a KV-cache size from the model (vLLM's CPU worker would otherwise reserve 90% of the machine's
memory) and a dtype its kernels compute correctly (`resolve_dtype`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError
from vllm.config import KVEventsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

from service.config import Settings
from service.errors import StartupError

logger = logging.getLogger(__name__)
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
        raise StartupError(
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


def cpu_kv_cache_bytes(args: AsyncEngineArgs, available: int) -> int:
    """The CPU KV-cache size when none is given: room for `CPU_KV_CACHE_SEQUENCES` full-length sequences, at
    most `CPU_KV_CACHE_CAP` and at most half of the `available` memory, but never less than one full-length
    sequence (vLLM refuses to start without that): too little memory for one is the operator's to fix.

    Without an explicit size, vLLM's CPU worker reserves `gpu_memory_utilization` (0.9) of the NUMA node's
    memory and refuses to start unless that much is free: 17 GiB for a 135M model, and no start at all on a
    machine where other programs hold a few GiB. Half of what is free leaves the rest to the weights and the
    engine's processes, which load after this is decided; the worker refuses a size above what is then free."""
    model = args.create_model_config()
    per_token = 2 * model.get_total_num_hidden_layers() * model.get_total_num_kv_heads() * model.get_head_size()
    one_sequence = per_token * model.dtype.itemsize * model.max_model_len
    size = min(CPU_KV_CACHE_CAP, one_sequence * CPU_KV_CACHE_SEQUENCES, available // 2)
    if size < one_sequence:
        raise StartupError(
            f"not enough free memory for the KV cache: one {model.max_model_len}-token sequence needs "
            f"{one_sequence / GiB:.2f} GiB, half of the {available / GiB:.2f} GiB free is less; lower "
            "--max-model-len, set --kv-cache-memory-bytes, or free memory"
        )
    return size


def free_cpu_memory() -> int:
    """What vLLM's CPU worker will count as free on its NUMA node (that of the first CPU this process may use),
    within the container's memory limit."""
    return get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory


def runtime_adapters(settings: Settings) -> bool:
    """Adapters may be added while the service runs (`--adapter-dir`): LoRA is on even with none at start."""
    return settings.adapter_dir is not None


def build_engine_args(settings: Settings, num_adapters: int, use_null_adapter: bool) -> AsyncEngineArgs:
    args = _engine_args(settings, num_adapters, use_null_adapter)
    legacy_size = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")  # vLLM's own variable overrides any size given
    if args.kv_cache_memory_bytes is None and current_platform.is_cpu() and not legacy_size:
        args.kv_cache_memory_bytes = cpu_kv_cache_bytes(args, free_cpu_memory())
        logger.info(
            "KV cache on CPU: %.2f GiB (set --kv-cache-memory-bytes to change)", args.kv_cache_memory_bytes / GiB
        )
    return args


def kv_events_config(settings: Settings) -> KVEventsConfig | None:
    """`--kv-events-config` as vLLM's own config (it publishes BlockStored/BlockRemoved events over ZMQ for
    prefix-aware routers such as llm-d's); a key or value vLLM does not know is the operator's to fix."""
    if settings.kv_events_config is None:
        return None
    try:
        return KVEventsConfig(**settings.kv_events_config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise StartupError(f"--kv-events-config: {problems}") from None


def multi_node_args(settings: Settings) -> dict[str, object]:
    """The leader's address and port only when given: unset, vLLM's own defaults stand."""
    given = {"master_addr": settings.master_addr, "master_port": settings.master_port}
    return {name: value for name, value in given.items() if value is not None}


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
        pipeline_parallel_size=settings.pipeline_parallel_size,
        data_parallel_size=settings.data_parallel_size,
        nnodes=settings.nnodes,
        node_rank=settings.node_rank,
        **multi_node_args(settings),
        block_size=settings.block_size,
        kv_events_config=kv_events_config(settings),
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
