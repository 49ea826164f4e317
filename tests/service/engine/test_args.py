"""vLLM's engine arguments from the flags taken from `vllm serve`: passed through with vLLM's meaning (its own
`KVEventsConfig`, parallel sizes, the multi-node leader's address), or refused at start in one line."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.engine.args import build_engine_args
from service.errors import StartupError


def engine_args(**settings: object):
    values = {"no_auth": True, "model": "/no/such/model", "kv_cache_memory_bytes": "1GiB", **settings}
    return build_engine_args(Settings(**values), num_adapters=0, use_null_adapter=False)


def test_vllm_serve_flags_reach_the_engine_arguments():
    args = engine_args(
        block_size=32, pipeline_parallel_size=2, data_parallel_size=3, nnodes=2, node_rank=0,
        master_addr="10.0.0.1", master_port=29600,
        kv_events_config={"enable_kv_cache_events": True, "endpoint": "tcp://*:5600", "topic": "kv"},
    )  # fmt: skip
    assert (args.block_size, args.pipeline_parallel_size, args.data_parallel_size) == (32, 2, 3)
    assert (args.nnodes, args.node_rank, args.master_addr, args.master_port) == (2, 0, "10.0.0.1", 29600)
    events = args.kv_events_config
    assert (events.enable_kv_cache_events, events.publisher, events.endpoint, events.topic) == (
        True, "zmq", "tcp://*:5600", "kv"
    )  # fmt: skip


def test_unset_flags_leave_vllms_defaults():
    from vllm.engine.arg_utils import AsyncEngineArgs

    args, defaults = engine_args(), AsyncEngineArgs(model="/no/such/model")
    assert args.kv_events_config is None and args.block_size is None
    assert (args.master_addr, args.master_port, args.nnodes) == (defaults.master_addr, defaults.master_port, 1)


@pytest.mark.parametrize(
    ("config", "message"),
    [({"enable_kv_cache_events": True, "publisher": "kafka"}, "publisher"), ({"topics": "kv"}, "topics")],
)
def test_a_kv_events_config_vllm_refuses_is_a_startup_error(config: dict, message: str):
    with pytest.raises(StartupError, match=f"--kv-events-config: {message}"):
        engine_args(kv_events_config=config)
