"""On CPU the service sizes its KV cache itself, so it starts on a machine where other programs hold memory.

vLLM's CPU worker, given no KV-cache size, reserves `gpu_memory_utilization` (0.9) of the node's memory and
refuses to start unless that much is free. These tests unset `VLLM_CPU_KVCACHE_SPACE` (which the other tests
set) to exercise the default a user of `make serve` gets.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.engine.args import CPU_KV_CACHE_CAP, CPU_KV_CACHE_SEQUENCES, build_engine_args, cpu_kv_cache_bytes
from service.errors import StartupError
from tests.fixtures.tiny_model import build_tiny_llama
from tsumugi.launcher import service_process, wait_for_stops

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

GiB = 1024**3
LONG_CONTEXT = 262_144  # the tiny model's 1 KiB per token: 256 MiB per sequence, 4 GiB for the default's 16


def test_default_kv_cache_is_derived_from_the_model(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = build_engine_args(Settings(model=str(tiny_model), max_model_len=512, no_auth=True), 0, False)
    # tiny Llama: 2 layers, 1 KV head of 64, float32 on CPU: 2 * 2 * 1 * 64 * 4 bytes per token.
    one_sequence = 2 * 2 * 64 * 4 * 512
    assert args.kv_cache_memory_bytes == one_sequence * CPU_KV_CACHE_SEQUENCES
    explicit = build_engine_args(Settings(model=str(tiny_model), kv_cache_memory_bytes="1GiB", no_auth=True), 0, False)
    assert explicit.kv_cache_memory_bytes == GiB
    assert 4 * GiB >= CPU_KV_CACHE_CAP


def test_the_default_kv_cache_takes_at_most_half_of_the_free_memory(tiny_model: Path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = build_engine_args(Settings(model=str(tiny_model), max_model_len=512, no_auth=True), 0, False)
    one_sequence = 2 * 2 * 64 * 4 * 512
    assert cpu_kv_cache_bytes(args, 64 * GiB) == one_sequence * CPU_KV_CACHE_SEQUENCES
    assert cpu_kv_cache_bytes(args, 5 * one_sequence) == 2 * one_sequence + one_sequence // 2
    refusal = r"one 512-token sequence needs .* GiB, half of the .* GiB free is less; lower --max-model-len"
    with pytest.raises(StartupError, match=refusal):
        cpu_kv_cache_bytes(args, one_sequence)


def memory_available() -> int:
    """MemAvailable: free memory plus the page cache the kernel can drop, what vLLM's CPU worker counts too."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def test_service_starts_while_another_process_holds_memory(tmp_path: Path):
    """4.5 GiB left free: vLLM's own default (0.9 of the machine) and an unbounded default of ours (4 GiB for this
    model's 256k-token context, with the engine's processes beside it) would both refuse to start."""
    model = build_tiny_llama(tmp_path / "tiny-long", seed=0, max_positions=LONG_CONTEXT)
    wait_for_stops()  # servers of earlier tests still stopping would give their memory back after it is measured
    hold = memory_available() - int(4.5 * GiB)
    if hold < 2 * GiB:
        pytest.skip(f"only {memory_available() / GiB:.1f} GiB available: too little to hold some and leave 4.5 GiB")
    ballast = bytearray(hold)
    for offset in range(0, hold, 4096):  # touch every page so the memory is really taken
        ballast[offset] = 1
    args = ["--model", str(model), "--served-model-name", "tiny", "--max-model-len", str(LONG_CONTEXT), "--no-auth",
            "--enforce-eager"]  # fmt: skip
    with service_process(args, tmp_path / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": None}) as server:
        size = re.search(r"KV cache on CPU: ([0-9.]+) GiB", server.log_path.read_text())
        assert size and float(size.group(1)) < CPU_KV_CACHE_CAP / GiB, size  # sized by what was left free
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    del ballast
