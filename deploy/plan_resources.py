"""Kubernetes sizing of a serving overlay, derived from the training module's GPU memory planner.

    python deploy/plan_resources.py --model meta-llama/Meta-Llama-3-8B-Instruct --dtype bf16 \
        --max-model-len 8192 --gpu-gib 40

asks the training module's memory planner (`training.memory`, imported: it is standard library only, the same
numbers `python -m training memory --mode serve --json` prints) for the weights, the KV cache per token and how
many full-length sequences fit at gpu_memory_utilization 0.9, and turns them into the values an overlay sets. The rules:
  GPUs         1 when the planner says the model fits one card, else the next power of two (tensor parallel);
  GPU class    nodeAffinity nvidia.com/gpu.memory (MiB, from GPU Feature Discovery) > 95% of --gpu-gib;
  max-num-seqs the planner's full-length concurrency, rounded up to a power of two (most requests are
               shorter than max-model-len, and vLLM preempts rather than fails when the cache is full);
  /dev/shm     a quarter of the weights, 2-8 GiB (memory-backed, counted against the memory limit);
  host memory  weights (read through the page cache while loading) + 6 GiB runtime (CUDA context, Python,
               tokenizer, API) + /dev/shm, rounded up to 8 GiB; requests = limits for Guaranteed QoS;
  CPU          4 cores per GPU (tokenisation, detokenisation, HTTP).
tests/deploy/test_resources.py checks that the fp16 and awq overlays carry exactly these values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script, from any directory: the repository root holds `training`

from training.errors import TrainingError  # noqa: E402
from training.memory import plan  # noqa: E402

RUNTIME_GIB = 6
CPU_PER_GPU = 4


def planner(model: str, dtype: str, max_model_len: int, gpu_gib: float) -> dict:
    """The planner's serving plan for one sequence of `max_model_len` tokens, as a plain dict."""
    return asdict(plan(model, "serve", dtype, batch=1, seq_len=max_model_len, gpu_gib=gpu_gib))


def next_power_of_two(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def sizing(model: str, dtype: str, max_model_len: int, gpu_gib: float) -> dict:
    plan = planner(model, dtype, max_model_len, gpu_gib)
    gpus = 1 if plan["fits"] else next_power_of_two(plan["total_gib"] / (gpu_gib * 0.9))
    shm_gib = min(8, max(2, math.ceil(plan["weights_gib"] / 4)))
    memory_gib = math.ceil((plan["weights_gib"] + RUNTIME_GIB + shm_gib) / 8) * 8
    return {
        "planner": plan,
        "TSUMUGI_MAX_MODEL_LEN": str(max_model_len),
        "TSUMUGI_MAX_NUM_SEQS": str(next_power_of_two(plan["max_concurrency_at_seq_len"])),
        "TSUMUGI_TENSOR_PARALLEL_SIZE": str(gpus),
        "nvidia.com/gpu": str(gpus),
        "gpu_memory_mib_gt": str(int(gpu_gib * 1024 * 0.95)),
        "cpu": str(CPU_PER_GPU * gpus),
        "memory": f"{memory_gib}Gi",
        "shm": f"{shm_gib}Gi",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory with config.json, or a known name")
    parser.add_argument("--dtype", required=True, choices=["bf16", "fp16", "int8", "int4"])
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU of the target class")
    args = parser.parse_args()
    try:
        result = sizing(args.model, args.dtype, args.max_model_len, args.gpu_gib)
    except TrainingError as error:  # e.g. a model that is neither a directory with config.json nor a known name
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
