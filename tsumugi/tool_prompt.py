"""How tools, tool calls and tool results are written into a prompt: one definition for training and serving.

A chat template either has its own tool format (it reads a `tools` variable and the `tool_calls` of assistant
turns, as Qwen's, Llama 3.1's or Hermes's templates do) or it has none (SmolLM2's, our Alpaca templates). For
the first kind the conversation is handed to the template as is. For the second kind this module rewrites the
conversation into plain system/user/assistant turns that any template renders, in **the default tool format**:

* the tool definitions go at the end of the system turn (one is added when the conversation has none), one JSON
  object per line between `<tools>` and `</tools>`, after a short instruction;
* an assistant call is written as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (one block per
  call, after the turn's text if it has any): the format vLLM's `hermes` tool parser reads, which works on plain
  text (the tags need not be tokens of the vocabulary);
* tool results become a user turn of `<tool_response>\\n...\\n</tool_response>` blocks, consecutive results
  merged into one turn so that templates that insist on alternating roles accept it.

The service renders requests with it (`service/prompts.py`) and the training module renders tool-calling
records with it (`training/data/templates.py`), so an adapter is prompted exactly as it was trained. Standard library
only, in the shared `tsumugi` package: the serving and training virtualenvs both import it, and the two
packages never import each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_TOOL_PARSER = "hermes"  # vLLM's parser that reads the default format
TOOLS_INSTRUCTION = (
    "You can call functions to answer the user. Their signatures, one JSON object per line:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one block per call, each a JSON object with the function's name and "
    'its arguments:\n<tool_call>\n{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n</tool_call>'
)


def template_has_tool_format(chat_template: str) -> bool:
    """Whether a Jinja chat template renders tools itself (it reads the `tools` variable)."""
    return "tools" in chat_template


def conversation_for_template(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, chat_template: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The `(conversation, tools)` to hand to `apply_chat_template` for OpenAI-shaped `messages` and `tools`.

    Messages carry `role`, `content` (a string or None), assistant `tool_calls` (`function.arguments` a JSON
    string, as OpenAI sends them) and tool `tool_call_id`. With a template of its own tool format, the calls'
    arguments are decoded into objects (what such templates expect) and `tools` is passed on; without one, the
    conversation is rewritten into the default format and no `tools` are passed.
    """
    if template_has_tool_format(chat_template):
        return [_native_turn(m) for m in messages], [dict(t) for t in tools] if tools else None
    return rewrite_conversation(messages, tools), None


def rewrite_conversation(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """`messages` as plain system/user/assistant turns in the default tool format (see the module docstring)."""
    turns: list[dict[str, Any]] = []
    if tools:
        block = tools_block(tools)
        if messages and messages[0].get("role") in ("system", "developer"):
            head = _text(messages[0].get("content"))
            turns.append({"role": "system", "content": f"{head}\n\n{block}" if head else block})
            messages = messages[1:]
        else:
            turns.append({"role": "system", "content": block})
    for message in messages:
        role = message.get("role")
        if role == "tool":
            result = f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>"
            if turns and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n" + result
            else:
                turns.append({"role": "user", "content": result, "tool_results": True})
        elif role == "assistant" and message.get("tool_calls"):
            turns.append({"role": "assistant", "content": assistant_text(message)})
        else:
            turns.append({"role": "system" if role == "developer" else role, "content": _text(message.get("content"))})
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """The instruction and tool signatures added to the system turn."""
    lines = "\n".join(json.dumps(_function_of(tool), ensure_ascii=False) for tool in tools)
    return TOOLS_INSTRUCTION.format(tools=lines)


def assistant_text(message: Mapping[str, Any]) -> str:
    """An assistant turn with calls: its text (if any), then one `<tool_call>` block per call."""
    blocks = [call_block(call["function"]["name"], call["function"].get("arguments")) for call in message["tool_calls"]]
    text = _text(message.get("content"))
    return "\n".join([text, *blocks] if text else blocks)


def call_block(name: str, arguments: str | Mapping[str, Any] | None) -> str:
    """One call in the default format; `arguments` as a JSON string (OpenAI's wire form) or an object."""
    decoded = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else (arguments or {})
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": decoded}, ensure_ascii=False) + "\n</tool_call>"


def _function_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = dict(tool.get("function", tool))
    return {key: function[key] for key in ("name", "description", "parameters") if function.get(key) is not None}


def _native_turn(message: Mapping[str, Any]) -> dict[str, Any]:
    turn = {key: value for key, value in message.items() if value is not None}
    turn["content"] = _text(message.get("content"))
    if message.get("tool_calls"):
        turn["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _decoded(call["function"].get("arguments"))}}
            for call in message["tool_calls"]
        ]
    return turn


def _decoded(arguments: str | Mapping[str, Any] | None) -> Any:
    if isinstance(arguments, str):
        return json.loads(arguments) if arguments.strip() else {}
    return dict(arguments or {})


def _text(content: str | Sequence[Mapping[str, Any]] | None) -> str:
    """Message content as text: a string, text parts joined, or '' for None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)
