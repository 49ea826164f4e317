"""Tool-calling records: OpenAI-shaped tools, calls and results load; each kind of mistake names the record and the
field; records render through `tool_prompt` exactly as the service renders a request, with the loss on every
assistant turn (the `<tool_call>` text included) and never on tool results."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from transformers import AutoTokenizer

from tests.training.conftest import REPO
from training.data.examples import adapter_chat_template, render, tokenize_example
from training.data.records import ChatRecord, DataError, load_records, parse_record, record_key
from tsumugi.default_model import DEFAULT_MODEL
from tsumugi.tool_prompt import conversation_for_template

TOOLS_DATA = REPO / "data" / "tools_ja_en.jsonl"
SMOLLM2 = REPO / DEFAULT_MODEL
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str = "c1", name: str = "get_weather", arguments: str = '{"city": "東京"}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


TWO_TURNS = {
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "東京の天気は？"},
        {"role": "assistant", "content": None, "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 12, "condition": "晴れ"}'},
        {"role": "assistant", "content": "東京は晴れ、12度です。"},
    ],
}


def changed(path: str, value: object, record: dict = TWO_TURNS) -> dict:
    """A copy of `record` with the value at a dotted path ('messages.1.tool_calls.0.id') replaced or deleted."""
    record = copy.deepcopy(record)
    *parents, leaf = [int(part) if part.isdigit() else part for part in path.split(".")]
    target = record
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return record


DELETE = object()


def test_shipped_tool_dataset_is_valid():
    records = load_records([TOOLS_DATA]).records
    assert len(records) >= 50
    assert all(isinstance(r, ChatRecord) and r.tools for r in records)
    first_turns = [r.messages[1] for r in records]
    assert sum(bool(m.tool_calls) for m in first_turns) >= 40  # calls, and some prose answers with no call
    assert sum(not m.tool_calls for m in first_turns) >= 6
    assert sum(any(m.role == "tool" for m in r.messages) for r in records) >= 6  # call -> result -> answer


def test_a_two_turn_record_loads_with_its_calls_and_results():
    record = parse_record(TWO_TURNS, "t.jsonl: line 1")
    assert [m.role for m in record.messages] == ["user", "assistant", "tool", "assistant"]
    assert record.messages[1].content == ""  # null content beside calls
    assert record.messages[1].tool_calls[0].name == "get_weather"
    assert record.messages[2].tool_call_id == "c1"
    assert record.messages[1].openai() == {**TWO_TURNS["messages"][1], "content": ""}
    other_arguments = changed("messages.1.tool_calls.0.function.arguments", '{"city": "大阪"}')
    assert record_key(record) != record_key(parse_record(other_arguments, "x"))


def test_plain_chat_records_keep_their_split_key():
    """Records without tools hash as before the tool fields existed, so existing splits do not move."""
    plain = {"messages": [{"role": "user", "content": "質問"}, {"role": "assistant", "content": "答え"}]}
    before = json.dumps([["user", "質問"], ["assistant", "答え"]], ensure_ascii=False).encode("utf-8")
    assert record_key(parse_record(plain, "x")) == hashlib.sha256(before).hexdigest()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (changed("messages.1.tool_calls.0.function.name", "get_wether"),
         "field 'messages[1].tool_calls[0].function.name': 'get_wether' is not a tool of this record"),
        (changed("tools", DELETE), "field 'messages[1].tool_calls[0].function.name': 'get_weather' is not a tool "
                                   "of this record (it has no 'tools')"),
        (changed("messages.1.tool_calls.0.function.arguments", '{"city": "東京"'),
         "field 'messages[1].tool_calls[0].function.arguments': not valid JSON"),
        (changed("messages.1.tool_calls.0.function.arguments", '["東京"]'),
         "field 'messages[1].tool_calls[0].function.arguments': must be a JSON object, got list"),
        (changed("messages.1.tool_calls.0.function.arguments", {"city": "東京"}),
         "field 'messages[1].tool_calls[0].function.arguments': must be a string of JSON"),
        (changed("messages.1.tool_calls.0.function.arguments", '{"town": "東京"}'),
         "field 'messages[1].tool_calls[0].function.arguments': get_weather requires ['city']"),
        (changed("messages.2.tool_call_id", "c9"), "field 'messages[2].tool_call_id': 'c9' is the id of no earlier"),
        (changed("messages.2.tool_call_id", DELETE), "field 'messages[2].tool_call_id': must be the id of the call"),
        (changed("messages.2", {"role": "user", "content": "まだ？"}),
         "field 'messages[1].tool_calls[0]': call 'c1' has no 'tool' result before messages[2]"),
        (changed("messages", [TWO_TURNS["messages"][0], TWO_TURNS["messages"][2], TWO_TURNS["messages"][3]]),
         "field 'messages[1].tool_call_id': 'c1' is the id of no earlier call"),
        (changed("messages.3", TWO_TURNS["messages"][2]), "field 'messages[3].tool_call_id': 'c1' already has its"),
        (changed("messages.1.tool_calls", [call(), call()]), "field 'messages[1].tool_calls[1].id': 'c1' is the id of"),
        (changed("messages.1.tool_calls", []), "field 'messages[1].tool_calls': must be a non-empty list of calls"),
        (changed("messages.1.tool_calls.0.type", "code"), "field 'messages[1].tool_calls[0].type': must be 'function'"),
        (changed("messages.1.tool_calls.0.id", ""), "field 'messages[1].tool_calls[0].id': must be a non-empty string"),
        (changed("messages.1.content", None, changed("messages.1.tool_calls", DELETE)),
         "field 'messages[1].content': must be a string, got NoneType"),
        (changed("messages.2.content", {"temperature": 12}), "field 'messages[2].content': must be a string, got dict"),
        (changed("tools", []), "field 'tools': must be a non-empty list of function tools"),
        (changed("tools.0.type", "retrieval"), "field 'tools[0]': must be {\"type\": \"function\""),
        (changed("tools.0.function.name", "get weather"), "field 'tools[0].function.name': must be 1-64 letters"),
        (changed("tools", [WEATHER, WEATHER]), "field 'tools[1].function.name': 'get_weather' is defined twice"),
        (changed("tools.0.function.parameters", ["city"]), "field 'tools[0].function.parameters': must be a JSON"),
        (changed("tools.0.function.parameters.required", "city"),
         "field 'tools[0].function.parameters.required': must be a list of argument names"),
        (changed("tools.0.function.description", 5), "field 'tools[0].function.description': must be a string"),
        (changed("messages", TWO_TURNS["messages"][:3]), "field 'messages': must end with a non-empty assistant"),
    ],
)  # fmt: skip
def test_bad_tool_record_names_file_line_and_field(tmp_path, record, expected):
    good = json.dumps(TWO_TURNS, ensure_ascii=False)
    path = tmp_path / "tools.jsonl"
    path.write_text(f"{good}\n{json.dumps(record, ensure_ascii=False)}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_records([path])
    assert f"{path}: line 2: {expected}" in str(error.value)


def test_a_record_may_end_with_its_call():
    record = parse_record(changed("messages", TWO_TURNS["messages"][:2]), "x")
    assert record.messages[-1].tool_calls and not record.messages[-1].content


# -- rendering and the loss mask -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2)


def served_prompt(tokenizer, chat_template: str, messages: list[dict], tools: list[dict]) -> str:
    """What the service renders for a chat request with `tools`: `tool_prompt`, then the model's template."""
    conversation, native_tools = conversation_for_template(messages, tools, chat_template)
    return tokenizer.apply_chat_template(
        conversation, tools=native_tools, chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )


@pytest.mark.parametrize("template", ["chat", "alpaca-ja", "alpaca-en"])
def test_training_prompt_is_the_served_prompt(smollm2_tokenizer, template):
    """Every learned turn is preceded by exactly the text the service renders for the conversation so far, with
    the chat template the adapter directory carries."""
    tokenizer = smollm2_tokenizer
    chat_template = adapter_chat_template(template, tokenizer)
    example = render(parse_record(TWO_TURNS, "x"), template, tokenizer)
    assert [learned for _, learned in example.pieces] == [False, True, False, True]
    context_1 = example.pieces[0][0]
    assert context_1 == served_prompt(tokenizer, chat_template, TWO_TURNS["messages"][:1], TWO_TURNS["tools"])
    assert example.prompt == served_prompt(tokenizer, chat_template, TWO_TURNS["messages"][:3], TWO_TURNS["tools"])
    assert '"name": "get_weather"' in context_1  # the tools are in the prompt


def test_loss_covers_every_assistant_turn_and_not_the_tool_result(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    example = render(parse_record(TWO_TURNS, "x"), "chat", tokenizer)
    tokens = tokenize_example(example, tokenizer, max_length=1024)
    learned = [i for i, m in zip(tokens["input_ids"], tokens["completion_mask"], strict=True) if m]
    context = [i for i, m in zip(tokens["input_ids"], tokens["completion_mask"], strict=True) if not m]
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call><|im_end|>\n'
    assert tokenizer.decode(learned) == call_text + "東京は晴れ、12度です。<|im_end|>\n"
    assert "<tool_response>" in tokenizer.decode(context) and "12度" not in tokenizer.decode(context)
    assert "晴れ" not in tokenizer.decode(context).split("<tool_response>")[0]  # nor the user turn


def test_pieces_tokenise_as_the_service_tokenises_the_whole_text(smollm2_tokenizer):
    """The service tokenises a rendered prompt in one go; training tokenises piece by piece. For every shipped
    record the ids agree, so the adapter learns the token sequence it will be served."""
    tokenizer = smollm2_tokenizer
    for record in load_records([TOOLS_DATA]).records:
        example = render(record, "chat", tokenizer)
        whole = "".join(text for text, _ in example.pieces)
        ids = tokenize_example(example, tokenizer, max_length=2048)["input_ids"]
        assert ids == tokenizer(whole, add_special_tokens=False).input_ids, record.source


def test_a_plain_chat_record_still_learns_only_its_final_reply(smollm2_tokenizer):
    plain = {"messages": [{"role": "user", "content": "一"}, {"role": "assistant", "content": "いち"},
                          {"role": "user", "content": "二"}, {"role": "assistant", "content": "に"}]}  # fmt: skip
    example = render(parse_record(plain, "x"), "chat", smollm2_tokenizer)
    assert [learned for _, learned in example.pieces] == [False, True]
    assert example.response == "に<|im_end|>\n"


NATIVE_TOOL_TEMPLATE = (
    "{%- if tools %}<|system|>tools: {{ tools | map(attribute='function') | map(attribute='name') | join(', ') }}"
    "<|end|>{% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.tool_calls is defined and m.tool_calls -%}<|assistant|>"
    "{%- for c in m.tool_calls %}call {{ c.function.name }} city={{ c.function.arguments.city }}{% endfor %}<|end|>"
    "{%- else -%}<|{{ m.role }}|>{{ m.content }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def test_a_template_with_its_own_tool_format_gets_the_tools_and_the_calls(smollm2_tokenizer):
    """Qwen-, Llama-3.1- or Hermes-style templates render tools and calls themselves: they get `tools` and calls
    with decoded arguments, and the learned pieces are what the template writes for the assistant's turns."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = NATIVE_TOOL_TEMPLATE
    example = render(parse_record(TWO_TURNS, "x"), "chat", tokenizer)
    assert example.pieces == (
        ("<|system|>tools: get_weather<|end|><|user|>東京の天気は？<|end|><|assistant|>", False),
        ("call get_weather city=東京<|end|>", True),
        ('<|tool|>{"temperature": 12, "condition": "晴れ"}<|end|><|assistant|>', False),
        ("東京は晴れ、12度です。<|end|>", True),
    )
    assert example.pieces[0][0] == served_prompt(tokenizer, NATIVE_TOOL_TEMPLATE, TWO_TURNS["messages"][:1], [WEATHER])
