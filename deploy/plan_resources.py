"""Kubernetes sizing of a serving overlay, derived from the training module's GPU memory planner.

    python deploy/plan_resources.py --model meta-llama/Meta-Llama-3-8B-Instruct --dtype bf16 \
        --max-model-len 8192 --gpu-gib 40

runs `python -m training memory --mode serve --json` (weights, KV cache per token, how many full-length
sequences fit at gpu_memory_utilization 0.9) and turns it into the values an overlay sets. The rules:
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
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_GIB = 6
CPU_PER_GPU = 4


def planner(model: str, dtype: str, max_model_len: int, gpu_gib: float) -> dict:
    args = ["-m", "training", "memory", "--model", model, "--mode", "serve", "--dtype", dtype]
    args += ["--seq-len", str(max_model_len), "--gpu-gib", str(gpu_gib), "--json"]
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory with config.json, or a known name")
    parser.add_argument("--dtype", required=True, choices=["bf16", "fp16", "int8", "int4"])
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU of the target class")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(sizing(args.model, args.dtype, args.max_model_len, args.gpu_gib), indent=2) + "\n")


if __name__ == "__main__":
    main()
