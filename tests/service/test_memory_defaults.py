"""On CPU the service sizes its KV cache itself, so it starts on a machine where other programs hold memory.

vLLM's CPU worker, given no KV-cache size, reserves `gpu_memory_utilization` (0.9) of the node's memory and
refuses to start unless that much is free. These tests unset `VLLM_CPU_KVCACHE_SPACE` (which the other tests
set) to exercise the default a user of `make serve` gets.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.engine.args import CPU_KV_CACHE_CAP, CPU_KV_CACHE_SEQUENCES, build_engine_args
from tsumugi.launcher import service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

GiB = 1024**3


def test_default_kv_cache_is_derived_from_the_model(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = build_engine_args(Settings(model=str(tiny_model), max_model_len=512, no_auth=True), 0, False)
    # tiny Llama: 2 layers, 1 KV head of 64, float32 on CPU: 2 * 2 * 1 * 64 * 4 bytes per token.
    one_sequence = 2 * 2 * 64 * 4 * 512
    assert args.kv_cache_memory_bytes == one_sequence * CPU_KV_CACHE_SEQUENCES
    explicit = build_engine_args(Settings(model=str(tiny_model), kv_cache_memory_bytes="1GiB", no_auth=True), 0, False)
    assert explicit.kv_cache_memory_bytes == GiB
    assert 4 * GiB >= CPU_KV_CACHE_CAP


def test_service_starts_while_another_process_holds_memory(tiny_model: Path, tmp_path: Path):
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # Hold enough that 0.9 of the machine is no longer free (what made vLLM's default refuse to start).
    hold = int(available - 0.85 * total) if available > 0.85 * total else 0
    if hold > available - 3 * GiB:
        pytest.skip(f"only {available / GiB:.1f} GiB free: too little to hold memory and still start a server")
    ballast = bytearray(hold)
    for offset in range(0, hold, 4096):  # touch every page so the memory is really taken
        ballast[offset] = 1
    args = ["--model", str(tiny_model), "--served-model-name", "tiny", "--max-model-len", "512", "--no-auth",
            "--enforce-eager"]  # fmt: skip
    with service_process(args, tmp_path / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": None}) as server:
        assert "KV cache on CPU" in server.log_path.read_text()
    del ballast
