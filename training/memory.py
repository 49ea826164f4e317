"""GPU memory planner: will this model serve / fine-tune on this GPU, and how much context fits beside it?

Pure arithmetic on a model's shape (a local `config.json` or a known name); standard library only (no torch,
no pydantic), so ops tooling (deploy/plan_resources.py) imports it and `python -m training memory` is instant.
All sizes are bytes; GiB = 2**30. Llama-style decoder (GQA attention, SwiGLU MLP) assumed.

Parameters: embedding V·h; per layer q h·(n_h·d), k and v h·(n_kv·d) each, o (n_h·d)·h, MLP 3·h·i, two norms
2h; final norm h; LM head V·h unless tied. (Llama-3-8B: 8,030,261,248.)

Weights (serving):
  fp32 4 B, bf16/fp16 2 B per parameter;
  int8: Linear weights 1 B + one 16-bit scale per output channel;
  int4: Linear weights 0.5 B + one 16-bit scale per `group_size` weights (AWQ/GPTQ W4A16, symmetric);
  embeddings, LM head and norms stay 16-bit in both (bitsandbytes and AWQ leave them unquantised).
KV cache: 2 (K and V) · layers · n_kv · d · bytes per token (vLLM paged cache, 16-bit by default).
Serving overhead: activations/workspace for one scheduler step plus CUDA graphs, taken as 1 GiB — the order
  vLLM reserves beyond weights and cache at gpu_memory_utilization 0.9. What fits: the KV tokens in
  gpu·0.9 − weights − overhead, as max_model_len × concurrency.

Training (predicted peak of torch.cuda.max_memory_allocated):
  full: mixed-precision AdamW, 16 B per parameter (16-bit weights + grads, fp32 master weights, Adam m and v:
    ZeRO, Rajbhandari et al. 2020, §3.1), all on the GPU;
  lora: frozen 16-bit base weights, trainable LoRA r·(in+out) per adapted Linear at 16 B per parameter
    (fp32 weight, grad, Adam m, v);
  qlora: base Linear weights NF4 0.5 B + blockwise absmax double-quantised, 8 bits per 64 weights plus an
    fp32 constant per 256 blocks (QLoRA, Dettmers et al. 2023, §3: 0.127 bits/param); embeddings and LM head
    16-bit; LoRA as above.
  Activations per token per layer, 16-bit, attention by SDPA/flash (no s² term): the Korthikanti et al.
    2022 accounting ("Reducing Activation Recomputation", §4) adapted to Llama blocks — two norm inputs 4h,
    attention input, Q, output 6h + K,V 4·n_kv·d, SwiGLU input 2h + gate, up, act, product 8i bytes.
    With gradient checkpointing (per decoder layer) only each layer's 2h-byte input is kept, plus one
    layer's activations while it is recomputed; checkpointing a fraction of the layers keeps the others whole.
  Logits: b·s·V·(2 + 4 + 4) B — 16-bit logits, their fp32 upcast for the loss, and its gradient.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from training.errors import ConfigError, ModelError
from tsumugi.cli_flags import command_settings, setting

GIB = 2**30
SERVE_DTYPES = ("fp32", "bf16", "fp16", "int8", "int4")
TRAIN_DTYPES = ("bf16", "fp16", "fp32")
MODES = ("serve", "full", "lora", "qlora")
DTYPES = tuple(sorted(set(SERVE_DTYPES) | set(TRAIN_DTYPES)))  # --dtype: the mode decides which apply
SERVE_OVERHEAD = 1 * GIB
GPU_MEMORY_UTILIZATION = 0.9
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@command_settings
class MemorySettings:
    """`python -m training memory`: its flags, and their defaults."""

    model: str = setting(help="model directory with config.json, or a known name")
    mode: Literal[MODES] = setting()
    batch_size: int = setting(1, "training batch, or serving concurrency")
    seq_len: int = setting(2048)
    lora_r: int = setting(16)
    grad_checkpointing: bool = setting(True)
    checkpoint_fraction: float | None = setting(None, "checkpoint only this share of the layers (0-1)")
    dtype: Literal[DTYPES] | None = setting(None)
    gpu_gib: float = setting(80.0)
    json: bool = setting(False)


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every Linear in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return [(h, self.q_dim), (h, self.kv_dim), (h, self.kv_dim), (self.q_dim, h), (h, i), (h, i), (i, h)]

    def linear_params(self) -> int:
        return self.num_layers * sum(a * b for a, b in self.linear_shapes())

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    def total_params(self) -> int:
        return self.linear_params() + self.embedding_params() + self.norm_params()


KNOWN_MODELS = {
    "meta-llama/Meta-Llama-3-8B": ModelShape(128256, 4096, 14336, 32, 32, 8, 128, False),
    "meta-llama/Meta-Llama-3-70B": ModelShape(128256, 8192, 28672, 80, 64, 8, 128, False),
    "HuggingFaceTB/SmolLM2-135M": ModelShape(49152, 576, 1536, 30, 9, 3, 64, True),
}
ALIASES = {
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
}


def load_shape(model: str) -> ModelShape:
    """A model's shape from `<dir>/config.json`, or from the known-models table by name."""
    config_path = Path(model) / "config.json"
    if config_path.is_file():
        return shape_from_config(config_path)
    if Path(model).is_dir():
        raise ModelError(f"{model}: a directory without config.json, so not a model directory")
    name = ALIASES.get(model, model)
    if name not in KNOWN_MODELS:
        known = sorted([*KNOWN_MODELS, *ALIASES])
        raise ModelError(f"{model!r} is neither a directory with config.json nor a known model ({known})")
    return KNOWN_MODELS[name]


def shape_from_config(config_path: Path) -> ModelShape:
    """A Hugging Face config.json of a Llama-style model (or a multimodal one's `text_config`)."""
    try:
        c = json.loads(config_path.read_text(encoding="utf-8"))
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        return ModelShape(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        )
    except json.JSONDecodeError as error:
        raise ModelError(f"{config_path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except (KeyError, AttributeError, TypeError) as error:
        raise ModelError(f"{config_path}: not a Llama-style model config (missing or bad {error})") from None


def serve_weight_bytes(shape: ModelShape, dtype: str, group_size: int = 128) -> float:
    other = shape.embedding_params() + shape.norm_params()
    linear = shape.linear_params()
    if dtype in BYTES:
        return (linear + other) * BYTES[dtype]
    out_channels = shape.num_layers * sum(out for _, out in shape.linear_shapes())
    if dtype == "int8":
        return linear * 1 + out_channels * 2 + other * 2
    if dtype == "int4":
        return linear * (0.5 + 2 / group_size) + other * 2
    raise ConfigError(f"--dtype for serving must be one of {SERVE_DTYPES}, got {dtype!r}")


def kv_bytes_per_token(shape: ModelShape, kv_dtype: str = "bf16") -> int:
    return 2 * shape.num_layers * shape.kv_dim * BYTES[kv_dtype]


def lora_params(shape: ModelShape, r: int) -> int:
    """LoRA A (r×in) and B (out×r) on every Linear of every layer ('all-linear', LM head excluded)."""
    return shape.num_layers * sum(r * (a + b) for a, b in shape.linear_shapes())


def activation_bytes_per_token_layer(shape: ModelShape, act_bytes: int) -> float:
    h, i = shape.hidden_size, shape.intermediate_size
    return act_bytes / 2 * (4 * h + 6 * h + 4 * shape.kv_dim + 2 * h + 8 * i)


def activation_bytes(shape: ModelShape, tokens: int, act_bytes: int, checkpointing: bool | float) -> float:
    """`checkpointing`: True/False, or the fraction of layers checkpointed (the recipe's partial policy)."""
    per_layer = activation_bytes_per_token_layer(shape, act_bytes)
    checkpointed = math.ceil(float(checkpointing) * shape.num_layers)
    kept = (shape.num_layers - checkpointed) * per_layer
    recomputed = checkpointed * shape.hidden_size * act_bytes + (per_layer if checkpointed else 0.0)
    return tokens * (kept + recomputed)


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    mode: str
    dtype: str
    params: int
    trainable_params: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    kv_cache_per_token_kib: float
    kv_cache_gib: float
    overhead_gib: float
    total_gib: float
    gpu_gib: float
    fits: bool
    max_concurrency_at_seq_len: int | None
    max_model_len_at_batch_size: int | None


def qlora_weight_bytes(shape: ModelShape) -> float:
    nf4_with_double_quant = 0.5 + 1 / 64 + 4 / (64 * 256)
    return shape.linear_params() * nf4_with_double_quant + (shape.embedding_params() + shape.norm_params()) * 2


def plan_serving(shape: ModelShape, name: str, dtype: str, batch: int, seq_len: int, gpu_gib: float) -> MemoryPlan:
    weights = serve_weight_bytes(shape, dtype)
    per_token = kv_bytes_per_token(shape)
    kv = per_token * seq_len * batch
    total = weights + kv + SERVE_OVERHEAD
    kv_budget_tokens = max(0.0, gpu_gib * GIB * GPU_MEMORY_UTILIZATION - weights - SERVE_OVERHEAD) / per_token
    return MemoryPlan(
        model=name, mode="serve", dtype=dtype, params=shape.total_params(), trainable_params=0,
        weights_gib=weights / GIB, gradients_gib=0.0, optimizer_gib=0.0, activations_gib=0.0, logits_gib=0.0,
        kv_cache_per_token_kib=per_token / 1024, kv_cache_gib=kv / GIB, overhead_gib=SERVE_OVERHEAD / GIB,
        total_gib=total / GIB, gpu_gib=gpu_gib, fits=total <= gpu_gib * GIB * GPU_MEMORY_UTILIZATION,
        max_concurrency_at_seq_len=int(kv_budget_tokens // seq_len),
        max_model_len_at_batch_size=int(kv_budget_tokens // batch),
    )  # fmt: skip


def plan_training(shape: ModelShape, name: str, mode: str, dtype: str, batch: int, seq_len: int,
                  lora_r: int, checkpointing: bool | float, gpu_gib: float) -> MemoryPlan:  # fmt: skip
    if dtype not in TRAIN_DTYPES:
        raise ConfigError(f"--dtype for training must be one of {TRAIN_DTYPES}, got {dtype!r}")
    width = BYTES[dtype]
    params = shape.total_params()
    if mode == "full":
        trainable = params
        weights, gradients, optimizer = params * width, params * width, params * (16 - 2 * width)
    else:
        trainable = lora_params(shape, lora_r)
        base = qlora_weight_bytes(shape) if mode == "qlora" else params * width
        weights, gradients, optimizer = base + trainable * 4, trainable * 4, trainable * 8
    tokens = batch * seq_len
    activations = activation_bytes(shape, tokens, width, checkpointing)
    logits = tokens * shape.vocab_size * (width + 4 + 4)
    total = weights + gradients + optimizer + activations + logits
    return MemoryPlan(
        model=name, mode=mode, dtype=dtype, params=params, trainable_params=trainable,
        weights_gib=weights / GIB, gradients_gib=gradients / GIB, optimizer_gib=optimizer / GIB,
        activations_gib=activations / GIB, logits_gib=logits / GIB, kv_cache_per_token_kib=0.0, kv_cache_gib=0.0,
        overhead_gib=0.0, total_gib=total / GIB, gpu_gib=gpu_gib, fits=total <= gpu_gib * GIB,
        max_concurrency_at_seq_len=None, max_model_len_at_batch_size=None,
    )  # fmt: skip


def plan(model: str, mode: str, dtype: str | None = None, batch: int = MemorySettings.batch_size,
         seq_len: int = MemorySettings.seq_len, lora_r: int = MemorySettings.lora_r,
         checkpointing: bool | float = MemorySettings.grad_checkpointing,
         gpu_gib: float = MemorySettings.gpu_gib) -> MemoryPlan:  # fmt: skip
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}, got {mode!r}")
    shape = load_shape(model)
    if mode == "serve":
        return plan_serving(shape, model, dtype or "bf16", batch, seq_len, gpu_gib)
    return plan_training(shape, model, mode, dtype or "bf16", batch, seq_len, lora_r, checkpointing, gpu_gib)


def format_table(result: MemoryPlan) -> str:
    rows = [
        ("model", result.model), ("mode", f"{result.mode} ({result.dtype})"),
        ("parameters", f"{result.params:,}"), ("trainable parameters", f"{result.trainable_params:,}"),
    ]  # fmt: skip
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache", "overhead"):
        value = getattr(result, f"{key}_gib")
        if value:
            rows.append((f"{key.replace('_', ' ')} GiB", f"{value:.2f}"))
    if result.mode == "serve":
        rows.append(("KV cache per token KiB", f"{result.kv_cache_per_token_kib:.1f}"))
    rows.append(("total (peak) GiB", f"{result.total_gib:.2f}"))
    rows.append((f"fits on {result.gpu_gib:g} GiB", "yes" if result.fits else "NO"))
    if result.mode == "serve":
        rows.append(("max concurrency at seq len", str(result.max_concurrency_at_seq_len)))
        rows.append(("max_model_len at batch size", str(result.max_model_len_at_batch_size)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_memory_command(args: argparse.Namespace) -> None:
    checkpointing = args.grad_checkpointing if args.checkpoint_fraction is None else args.checkpoint_fraction
    if not 0.0 <= checkpointing <= 1.0:
        raise ConfigError(f"--checkpoint-fraction must be between 0 and 1, got {checkpointing}")
    result = plan(args.model, args.mode, args.dtype, args.batch_size, args.seq_len, args.lora_r,
                  checkpointing, args.gpu_gib)  # fmt: skip
    print(json.dumps(asdict(result)) if args.json else format_table(result))
