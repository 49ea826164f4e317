"""Instruction data: load and validate records, split them, and turn them into (prompt, response) token ids.

Accepted inputs:

* Alpaca records — `instruction` (non-empty string), `input` (string, optional, may be empty), `output`
  (non-empty string) — from a `.json` file (a JSON array) or a `.jsonl` file (one object per line);
* chat records — `messages`: a list of `{"role": "system"|"user"|"assistant", "content": str}` ending with an
  assistant message — from `.jsonl`; with `tools`, assistant `tool_calls` and `tool` results in OpenAI's shape
  (checked in `training/data/tool_records.py`).

A bad record stops the run with an error naming the file, the line (JSONL) or record number (JSON) and the
field. With `skip_invalid=True` bad records are skipped instead, and every skipped record is reported, so
nothing disappears silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from training.data.templates import Message
from training.data.tool_records import ToolCalls, parse_tools
from training.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class AlpacaRecord:
    instruction: str
    input: str
    output: str
    source: str


@dataclass(frozen=True)
class ChatRecord:
    messages: tuple[Message, ...]
    source: str
    tools: tuple[dict, ...] | None = None  # OpenAI function tools the assistant may call


Record = AlpacaRecord | ChatRecord


@dataclass
class LoadedData:
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records_per_file: dict[str, int] = field(default_factory=dict)  # valid records of each path, for the manifest


def load_records(paths: list[Path], skip_invalid: bool = False) -> LoadedData:
    """Read and validate every record of every file; raise `DataError` on the first bad one unless skipping."""
    loaded = LoadedData()
    for path in paths:
        loaded.records_per_file.setdefault(str(Path(path)), 0)
        for location, raw in _raw_records(Path(path)):
            try:
                loaded.records.append(parse_record(raw, location))
                loaded.records_per_file[str(Path(path))] += 1
            except DataError as error:
                if not skip_invalid:
                    raise
                loaded.skipped.append(str(error))
    if not loaded.records:
        raise DataError(f"no usable records in {', '.join(str(p) for p in paths)}")
    return loaded


def _raw_records(path: Path) -> list[tuple[str, object]]:
    """(location, parsed JSON value) pairs; a file that is not UTF-8 or not JSON fails with its position."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        return [_parse_jsonl_line(path, number, line) for number, line in _nonblank_lines(data)]
    if path.suffix == ".json":
        text = _decode(path, data, "file")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {error.lineno}: invalid JSON: {error.msg}") from error
        if not isinstance(value, list):
            raise DataError(f"{path}: a .json data file must hold a JSON array of records")
        return [(f"{path}: record {index + 1}", item) for index, item in enumerate(value)]
    raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .json or .jsonl)")


class JsonLine(NamedTuple):
    number: int
    location: str  # `file: line N`, the start of every error about this line
    value: object


def jsonl_values(path: Path) -> list[JsonLine]:
    """Each non-blank line of a JSONL file, parsed; a missing file, a line that is not UTF-8 or not JSON stops
    with a DataError naming file and line. What a value must be is the caller's to check (a record, a task
    header, a question, a pair)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    values = []
    for number, line in _nonblank_lines(path.read_bytes()):
        location = f"{path}: line {number}"
        try:
            values.append(JsonLine(number, location, json.loads(_decode(path, line, f"line {number}"))))
        except json.JSONDecodeError as error:
            raise DataError(f"{location}: invalid JSON: {error.msg} (column {error.colno})") from None
    return values


def _nonblank_lines(data: bytes) -> list[tuple[int, bytes]]:
    return [(number, line) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]


def _parse_jsonl_line(path: Path, number: int, line: bytes) -> tuple[str, object]:
    location = f"{path}: line {number}"
    try:
        return location, json.loads(_decode(path, line, f"line {number}"))
    except DataError as error:
        return location, _BrokenLine(str(error))
    except json.JSONDecodeError as error:
        return location, _BrokenLine(f"{location}: invalid JSON: {error.msg} (column {error.colno})")


@dataclass(frozen=True)
class _BrokenLine:
    """A JSONL line that does not decode or parse; kept as a value so `--skip-invalid` can report and skip it."""

    message: str


def _decode(path: Path, data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: {where}: not valid UTF-8 (byte {error.start}: {data[error.start : error.start + 1]!r})"
        ) from error


def parse_record(raw: object, location: str) -> Record:
    """Validate one parsed JSON value as an Alpaca or chat record."""
    if isinstance(raw, _BrokenLine):
        raise DataError(raw.message)
    if not isinstance(raw, dict):
        raise DataError(f"{location}: a record must be a JSON object, got {type(raw).__name__}")
    if "messages" in raw:
        return _parse_chat(raw, location)
    instruction = _required_text(raw, "instruction", location)
    input_text = raw.get("input", "")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        raise DataError(f"{location}: field 'input': must be a string, got {type(input_text).__name__}")
    output = _required_text(raw, "output", location)
    return AlpacaRecord(instruction=instruction, input=input_text, output=output, source=location)


def _required_text(raw: dict, name: str, location: str) -> str:
    if name not in raw:
        raise DataError(f"{location}: field '{name}': missing")
    value = raw[name]
    if not isinstance(value, str):
        raise DataError(f"{location}: field '{name}': must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{location}: field '{name}': is empty")
    return value


def _parse_chat(raw: dict, location: str) -> ChatRecord:
    tools = parse_tools(raw["tools"], location) if raw.get("tools") is not None else None
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError.in_field(location, "messages", "must be a non-empty list")
    calls = ToolCalls(location, tools)
    parsed = [_parse_message(message, f"messages[{index}]", calls) for index, message in enumerate(messages)]
    last = parsed[-1]
    if last.role != "assistant" or not (last.content.strip() or last.tool_calls):
        raise DataError.in_field(location, "messages", "must end with a non-empty assistant message")
    if not any(m.role == "user" for m in parsed):
        raise DataError.in_field(location, "messages", "needs at least one user message")
    return ChatRecord(messages=tuple(parsed), source=location, tools=tools)


def _parse_message(message: object, path: str, calls: ToolCalls) -> Message:
    if not isinstance(message, dict):
        raise DataError.in_field(calls.location, path, "must be an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise DataError.in_field(calls.location, f"{path}.role", f"must be one of {list(ROLES)}, got {role!r}")
    calls.check_answered(path, role)
    tool_calls, tool_call_id = (), None
    if role == "assistant" and message.get("tool_calls") is not None:
        tool_calls = calls.parse(message["tool_calls"], f"{path}.tool_calls")
        content = "" if content is None else content  # OpenAI sends null content with calls
    if role == "tool":
        tool_call_id = calls.answer(message.get("tool_call_id"), f"{path}.tool_call_id")
    if not isinstance(content, str):
        raise DataError.in_field(calls.location, f"{path}.content", f"must be a string, got {type(content).__name__}")
    return Message(role=role, content=content, tool_calls=tool_calls, tool_call_id=tool_call_id)


def record_key(record: Record) -> str:
    """Content hash of a record: the split depends on what a record says, not where it sits in the file."""
    if isinstance(record, AlpacaRecord):
        payload = [record.instruction, record.input, record.output]
    else:  # tool calls, their ids and the tools only where a record has them, so older keys stay the same
        payload = [[m.role, m.content, *_call_key(m)] for m in record.messages]
        if record.tools is not None:
            payload.append(list(record.tools))
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def _call_key(message: Message) -> list:
    calls = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    return [calls] if calls else [message.tool_call_id] if message.tool_call_id is not None else []


def select_records(records: list[Record], indices: list[int] | None) -> list[Record]:
    """The records at these 0-based positions (load order across the files), or all of them for `None`.

    For training on a focused subset of a larger file without copying it, e.g. the demo teaching exactly the
    questions it then asks; an index that does not exist is an error, not an empty selection."""
    if indices is None:
        return records
    missing = [i for i in indices if not 0 <= i < len(records)]
    if missing:
        raise DataError(f"data.records: {missing} out of range; the data has {len(records)} records (0-based)")
    return [records[i] for i in indices]


def split_records(records: list[Record], validation_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic train/validation split by hashing (seed, record content) into [0, 1)."""
    if not 0.0 <= validation_fraction < 1.0:  # the config checks the range: here it is our bug
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    train, validation = [], []
    for record in records:
        digest = hashlib.sha256(f"{seed}:{record_key(record)}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") / 2**64
        (validation if bucket < validation_fraction else train).append(record)
    if not train:
        raise DataError("the validation split took every record; lower validation_fraction")
    return train, validation
