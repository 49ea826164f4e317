"""Grammars for forced tool calls, built with xgrammar (vLLM's structured-output backend) per request.

JSON schemas allow whitespace between tokens, and a model that puts its probability there (a fine-tune gone
wrong, random weights) pads a call until `max_tokens` cuts it. vLLM 0.32's xgrammar backend takes "no
whitespace" only as an engine-wide setting, so a forced call's schema is turned into a grammar here, per
request (well under a millisecond; vLLM caches compiled grammars by their text).
"""

from __future__ import annotations

from typing import Any

import xgrammar

from service.errors import InvalidRequest


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
