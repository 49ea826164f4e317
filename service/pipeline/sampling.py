"""Request fields → `GenerationParams`: the one place sampling settings are derived from a request.

Fields that chat and completions share, and that `GenerationParams` names the same way, are copied by name
(`_SHARED`), so a new sampling field is declared in `api/schemas/sampling.py` and in `GenerationParams` and needs no
mapping code; only the endpoint-specific ones (output budget, logprobs, structured output) are spelled out.
"""

from __future__ import annotations

from dataclasses import fields

from service.api.schemas.chat import ChatCompletionRequest
from service.api.schemas.completions import CompletionRequest
from service.api.schemas.sampling import SamplingFields
from service.engine.types import GenerationParams
from service.errors import InvalidRequest
from service.pipeline.tools import ToolCallPolicy

# skip_special_tokens: a request may only say true (vllm-router's value, our default); chat keeps special tokens
# where its tool parser needs them to find the calls.
_SPELLED_OUT = ("max_tokens", "stop", "logprobs", "skip_special_tokens")
_SHARED = tuple(
    f.name for f in fields(GenerationParams) if f.name in SamplingFields.model_fields and f.name not in _SPELLED_OUT
)


def generation_params(
    body: ChatCompletionRequest | CompletionRequest,
    num_prompt_tokens: int,
    max_model_len: int,
    tools: ToolCallPolicy | None = None,
    keep_special_tokens: bool = False,
) -> GenerationParams:
    """The engine settings for one prompt of `body` that is `num_prompt_tokens` long. `tools` (chat) says how
    tool calls constrain the output: a forced choice's schema, or calls allowed next to a JSON answer."""
    shared = {name: getattr(body, name) for name in _SHARED}
    stop = tuple(body.stop_list())
    is_chat = isinstance(body, ChatCompletionRequest)
    requested = (body.max_completion_tokens or body.max_tokens) if is_chat else body.max_tokens
    if requested is not None and body.min_tokens > requested:
        raise InvalidRequest(f"min_tokens: must not exceed max_tokens ({requested})", param="min_tokens")
    budget = output_budget(
        requested, num_prompt_tokens, max_model_len, prompt_param="messages" if is_chat else "prompt"
    )
    if is_chat:
        tool_constraint = tools.constraint() if tools else None
        tool_call_schema = tools.call_alternative() if tools else None
        response_format = body.response_format
        kind = response_format.type if response_format else "text"
        schema = None
        if kind == "json_schema" and response_format and response_format.json_schema:
            schema = response_format.json_schema.schema_ or {"type": "object"}
        return GenerationParams(
            max_tokens=budget,
            stop=stop,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            json_schema=tool_constraint or schema,
            json_object=kind == "json_object" and tool_constraint is None,
            json_schema_source="tools" if tool_constraint else "response_format",
            tool_call_schema=tool_call_schema if tool_constraint is None else None,
            skip_special_tokens=not keep_special_tokens,
            **shared,
        )
    return GenerationParams(max_tokens=budget, stop=stop, logprobs=body.logprobs, **shared)


def output_budget(
    requested: int | None, num_prompt_tokens: int, max_model_len: int, prompt_param: str = "messages"
) -> int:
    """The output budget: as requested, or the rest of the context window; 400 when it cannot fit."""
    room = max_model_len - num_prompt_tokens
    if requested is None:
        if room < 1:
            raise InvalidRequest(
                f"This model's maximum context length is {max_model_len} tokens; the prompt has "
                f"{num_prompt_tokens} tokens, leaving no room for output.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        return room
    if requested > room:
        raise InvalidRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{num_prompt_tokens + requested} tokens ({num_prompt_tokens} in the prompt, {requested} for "
            "the completion). Please reduce the prompt or the completion length.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested
