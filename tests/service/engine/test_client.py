"""`Engine.generate` tells errors apart by origin (vLLM is imported, but no engine is started).

What vLLM raises while taking a request (its validation) is the client's mistake: 400. What goes wrong in
our own conversion of its outputs is ours: it must not be turned into a 400.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.engine.client import Engine
from service.engine.types import EngineInfo, GenerationParams
from service.errors import APIError, InvalidRequest


class StubLLM:
    """Stands in for vLLM's AsyncLLM: `generate` raises `fail_with` at once, or yields `outputs`."""

    def __init__(self, outputs: list, fail_with: Exception | None = None) -> None:
        self.outputs = outputs
        self.fail_with = fail_with

    async def generate(self, prompt, sampling, request_id, lora_request=None):
        if self.fail_with is not None:
            raise self.fail_with
        for output in self.outputs:
            yield output


def run(llm: StubLLM) -> list:
    engine = Engine(llm, EngineInfo(max_model_len=64), None)  # type: ignore[arg-type]

    async def consume() -> list:
        return [step async for step in engine.generate("r", [1, 2], GenerationParams(max_tokens=4), None)]

    return asyncio.run(consume())


def choice(text: str, token_ids: list[int], finish: str | None) -> SimpleNamespace:
    return SimpleNamespace(index=0, text=text, token_ids=token_ids, finish_reason=finish, logprobs=None)


def test_vllm_validation_error_is_the_clients():
    with pytest.raises(InvalidRequest, match="prompt is too long"):
        run(StubLLM([], fail_with=ValueError("prompt is too long")))


def test_a_type_error_inside_vllm_is_ours_not_the_clients():
    """vLLM raises TypeError for a wrong argument (ours: say, params of the wrong type), never for client data."""
    with pytest.raises(APIError) as info:
        run(StubLLM([], fail_with=TypeError("params must be either SamplingParams or PoolingParams")))
    assert info.value.status == 500 and not isinstance(info.value, InvalidRequest)


def test_a_bug_in_our_conversion_is_not_blamed_on_the_client():
    broken = SimpleNamespace(outputs=[choice("a", None, None)], prompt_token_ids=[1, 2], finished=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as info:
        run(StubLLM([broken]))
    assert not isinstance(info.value, APIError)


def test_outputs_become_steps():
    output = SimpleNamespace(outputs=[choice("hi", [5, 6], "stop")], prompt_token_ids=[1, 2], finished=True)
    [step] = run(StubLLM([output]))
    assert (step.num_prompt_tokens, step.finished) == (2, True)
    assert (step.deltas[0].text, step.deltas[0].num_new_tokens, step.deltas[0].finish_reason) == ("hi", 2, "stop")


@pytest.mark.parametrize(
    ("quantization", "dtype", "on_cpu", "expected"),
    [
        (None, "auto", True, "float32"),
        (None, "auto", False, "auto"),
        ({"quant_method": "awq", "bits": 4}, "auto", True, "bfloat16"),
        ({"quant_method": "awq", "bits": 4}, "auto", False, "auto"),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 4}, "input_activations": None}},
            },
            "auto",
            True,
            "bfloat16",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8}, "input_activations": {"num_bits": 8}}},
            },
            "auto",
            True,
            "float32",
        ),
        (None, "bfloat16", True, "bfloat16"),
    ],
)
def test_auto_dtype_is_one_the_kernels_run(tmp_path, quantization, dtype, on_cpu, expected):
    import json

    from service.config import Settings
    from service.engine.args import resolve_dtype

    config = {"model_type": "llama", **({"quantization_config": quantization} if quantization else {})}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_dtype(Settings(model=str(tmp_path), dtype=dtype, no_auth=True), on_cpu) == expected


def test_an_explicit_dtype_the_w4a16_kernel_cannot_run_is_a_clear_error(tmp_path):
    import json

    from service.config import Settings
    from service.engine.args import resolve_dtype
    from service.errors import StartupError

    config = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(StartupError, match="--dtype float32"):
        resolve_dtype(Settings(model=str(tmp_path), dtype="float32", no_auth=True), on_cpu=True)
