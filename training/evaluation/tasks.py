"""Evaluation tasks in llm-jp-eval's file schema, and the requests that ask a model about them.

Two kinds of task file, told apart by their suffix:

* `.json` — llm-jp-eval's evaluation file, read unchanged (v1.3.0's `OutputInfo`, written by its
  preprocessing to `<dataset_dir>/<version>/evaluation/{train,dev,test}/<task>.json`)::

      {"instruction": str, "output_length": int, "metrics": [str, ...],
       "few_shots": [{"input": str, "output": str}, ...],       # optional here (older files lack it)
       "samples": [{"input": str, "output": str}, ...]}          # other keys (label_list, ...) are ignored

  llm-jp-eval does not use the file's `few_shots`: its `get_few_shot_samples` takes the first samples of
  the `train` split beside the evaluated file (`.../evaluation/train/<task>.json`). We do the same when the
  file's own `few_shots` is empty, so pointing `load_tasks` at `.../evaluation/test` reproduces its prompts.

* `.jsonl` — our own, for hand-written tasks: the first non-blank line is the header object
  `{"instruction", "output_length", "metrics", "few_shots"?}` (no `samples`), then one `{"input", "output"}`
  object per line. Unknown keys are refused in this format, so a typo (`"few_shot"`) cannot silently drop data.

A bad file stops with a `DataError` naming the file, the line (JSONL) and the field, e.g.
`tasks/qa.json: field 'samples[3].output': must be a string, got int`.

Prompts (`build_requests`) follow llm-jp-eval's `get_evaluation_prompt` without a custom template, byte for
byte: the Alpaca-ja preamble, `### 指示:` with the task instruction, each few-shot as `### 入力:`/`### 応答:`
with its answer, then the sample's `### 入力:` and an open `### 応答:`. One known difference: llm-jp-eval
pushes that text through a LangChain f-string template, so `{{` in an instruction or few-shot answer comes
out as `{` there (and a lone `{name}` is an error); here all text is used literally.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.data.records import jsonl_values
from training.errors import ConfigError, DataError
from training.evaluation.metrics import METRICS

# llm-jp-eval's default prompt (get_evaluation_prompt, no custom_prompt_template), in its three parts.
ALPACA_PREAMBLE = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
HEADER_KEYS = ("instruction", "output_length", "metrics")
HEADER_SHAPE = "{instruction, output_length, metrics}"
JSONL_HEADER_KEYS = frozenset({*HEADER_KEYS, "few_shots"})
SAMPLE_KEYS = frozenset({"input", "output"})
# Payload keys that PromptSettings.sampling must not set: build_requests or the runner own them.
RESERVED_PAYLOAD_KEYS = frozenset({"model", "prompt", "messages", "max_tokens", "temperature"})


@dataclass(frozen=True)
class Sample:
    """One question and its reference answer (llm-jp-eval's `Sample`)."""

    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """One evaluation task: what to ask, how long an answer may be, how to score it, and the samples."""

    name: str
    instruction: str
    output_length: int
    metrics: tuple[str, ...]
    few_shots: tuple[Sample, ...]
    samples: tuple[Sample, ...]
    source: Path


@dataclass(frozen=True)
class PromptSettings:
    """How tasks become requests. Defaults are llm-jp-eval's (`num_few_shots: 4`, `max_num_samples: 100`).

    `mode="alpaca"` sends llm-jp-eval's prompt text to `/v1/completions`; `mode="chat"` sends messages to
    `/v1/chat/completions` (system = instruction, few-shots as user/assistant turns, then the sample as the
    user turn) so a chat model is asked through its own chat template. `max_samples=None` means all samples.
    `sampling` adds further body fields (`top_p`, `seed`, `stop`, ...), sent as given.
    """

    num_few_shots: int = 4
    max_samples: int | None = 100
    mode: Literal["alpaca", "chat"] = "alpaca"
    temperature: float = 0.0
    sampling: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.num_few_shots, bool) or not isinstance(self.num_few_shots, int) or self.num_few_shots < 0:
            raise ConfigError(f"num_few_shots must be an integer >= 0, got {self.num_few_shots!r}")
        if self.max_samples is not None and (
            isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1
        ):
            raise ConfigError(f"max_samples must be an integer >= 1 or None (all), got {self.max_samples!r}")
        if self.mode not in ("alpaca", "chat"):
            raise ConfigError(f"mode must be 'alpaca' or 'chat', got {self.mode!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise ConfigError(f"temperature must be a number >= 0, got {self.temperature!r}")
        reserved = sorted(RESERVED_PAYLOAD_KEYS & set(self.sampling))
        if reserved:
            raise ConfigError(f"sampling settings may not set {reserved}: they come from the task and the endpoint")
        object.__setattr__(self, "sampling", dict(self.sampling))  # a private copy: the settings stay as built


@dataclass(frozen=True)
class EvalItem:
    """One request to send: which sample it asks about, its reference answer, and the body (without `model`)."""

    task: str
    index: int  # position of the sample in Task.samples
    input: str
    reference: str
    payload: dict


def load_tasks(path: Path) -> list[Task]:
    """A task file, or every `*.json`/`*.jsonl` file of a directory (not recursive), in name order."""
    path = Path(path)
    if path.is_file():
        return [load_task(path)]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl"))
    if not files:
        raise DataError(f"{path}: no *.json or *.jsonl task files in this directory")
    tasks = [load_task(file) for file in files]
    _refuse_duplicate_names(tasks)
    return tasks


def _refuse_duplicate_names(tasks: list[Task]) -> None:
    """`qa.json` beside `qa.jsonl` would give two results named `qa`; a report could not tell them apart."""
    seen: dict[str, Path] = {}
    for task in tasks:
        if task.name in seen:
            raise DataError(f"{task.source}: task name '{task.name}' is also the name of {seen[task.name]}")
        seen[task.name] = task.source


def load_task(path: Path) -> Task:
    """Read and check one task file (`.json`: llm-jp-eval's schema; `.jsonl`: header line + sample lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".json":
        return _load_json_task(path)
    if path.suffix == ".jsonl":
        return _load_jsonl_task(path)
    raise DataError(f"{path}: unsupported task file type {path.suffix!r} (use .json or .jsonl)")


def _load_json_task(path: Path) -> Task:
    raw = _parse_json(path, _decode(path, path.read_bytes(), "file"), f"{path}")
    location = str(path)
    if not isinstance(raw, dict):
        raise DataError(f"{location}: a .json task file must hold one JSON object, got {_type_name(raw)}")
    header = _parse_header(raw, location)
    samples = _parse_samples(_required(raw, "samples", location), "samples", location)
    if not samples:
        raise DataError.in_field(location, "samples", "is empty; a task needs at least one sample")
    few_shots = _parse_samples(raw.get("few_shots", []), "few_shots", location)
    if not few_shots:
        few_shots = _train_split_few_shots(path)
    return Task(name=path.stem, **header, few_shots=few_shots, samples=samples, source=path)


def _train_split_few_shots(path: Path) -> tuple[Sample, ...]:
    """llm-jp-eval's few-shot pool: the samples of `../train/<task>.json` beside a `dev` or `test` file."""
    train = path.parent.parent / "train" / path.name
    if path.parent.name not in ("dev", "test") or not train.is_file():
        return ()
    raw = _parse_json(train, _decode(train, train.read_bytes(), "file"), str(train))
    if not isinstance(raw, dict):
        raise DataError(f"{train}: a .json task file must hold one JSON object, got {_type_name(raw)}")
    return _parse_samples(_required(raw, "samples", str(train)), "samples", str(train))


def _load_jsonl_task(path: Path) -> Task:
    lines = jsonl_values(path)
    if not lines:
        raise DataError(f"{path}: empty file; the first line must be the task header {HEADER_SHAPE}")
    raw_header, header_location = lines[0].value, lines[0].location
    _check_jsonl_header(raw_header, header_location)
    header = _parse_header(raw_header, header_location)
    few_shots = _parse_samples(raw_header.get("few_shots", []), "few_shots", header_location)
    samples = tuple(_parse_jsonl_sample(line.location, line.value) for line in lines[1:])
    if not samples:
        raise DataError(f'{path}: no samples after the header line; add one {{"input", "output"}} object per line')
    return Task(name=path.stem, **header, few_shots=few_shots, samples=samples, source=path)


def _check_jsonl_header(raw: object, location: str) -> None:
    if not isinstance(raw, dict):
        raise DataError(f"{location}: the first line must be the task header object, got {_type_name(raw)}")
    if "instruction" not in raw and SAMPLE_KEYS & set(raw):
        raise DataError(f"{location}: the first line must be the task header {HEADER_SHAPE}, got a sample")
    if "samples" in raw:
        raise DataError.in_field(location, "samples", "not allowed in a .jsonl header; put one sample per line")
    unknown = sorted(set(raw) - JSONL_HEADER_KEYS)
    if unknown:
        raise DataError.in_field(location, unknown[0], f"unknown header key; allowed: {sorted(JSONL_HEADER_KEYS)}")


def _parse_jsonl_sample(location: str, raw: object) -> Sample:
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - SAMPLE_KEYS)
        if unknown:
            raise DataError.in_field(location, unknown[0], "unknown key; a sample line has only 'input' and 'output'")
    return _parse_sample(raw, "", location)


def _parse_header(raw: dict, location: str) -> dict:
    """instruction (non-empty text), output_length (int > 0), metrics (non-empty list of names)."""
    instruction = _required(raw, "instruction", location)
    if not isinstance(instruction, str):
        raise DataError.in_field(location, "instruction", f"must be a string, got {_type_name(instruction)}")
    if not instruction.strip():
        raise DataError.in_field(location, "instruction", "is empty")
    output_length = _required(raw, "output_length", location)
    if isinstance(output_length, bool) or not isinstance(output_length, int) or output_length < 1:
        raise DataError.in_field(location, "output_length", f"must be a positive integer, got {output_length!r}")
    return {
        "instruction": instruction,
        "output_length": output_length,
        "metrics": _parse_metrics(_required(raw, "metrics", location), location),
    }


def _parse_metrics(metrics: object, location: str) -> tuple[str, ...]:
    if not isinstance(metrics, list) or not metrics:
        raise DataError.in_field(location, "metrics", f"must be a non-empty list of metric names, got {metrics!r}")
    for index, name in enumerate(metrics):
        if not isinstance(name, str) or not name.strip():
            raise DataError.in_field(location, f"metrics[{index}]", f"must be a metric name, got {name!r}")
        if name not in METRICS:
            raise DataError.in_field(
                location, f"metrics[{index}]", f"unknown metric {name!r}; known: {', '.join(METRICS)}"
            )
    return tuple(metrics)


def _parse_samples(raw: object, path: str, location: str) -> tuple[Sample, ...]:
    if not isinstance(raw, list):
        raise DataError.in_field(location, path, f"must be a list of {{input, output}} objects, got {_type_name(raw)}")
    return tuple(_parse_sample(item, f"{path}[{index}]", location) for index, item in enumerate(raw))


def _parse_sample(raw: object, path: str, location: str) -> Sample:
    """`path` is the sample's own field path (`samples[3]`), or "" for a JSONL line, which is the sample."""
    if not isinstance(raw, dict):
        where = f"{location}: field '{path}'" if path else location
        raise DataError(f"{where}: a sample must be an object with 'input' and 'output', got {_type_name(raw)}")
    prefix = f"{path}." if path else ""
    for name in ("input", "output"):
        if name not in raw:
            raise DataError.in_field(location, prefix + name, "missing")
        if not isinstance(raw[name], str):
            raise DataError.in_field(location, prefix + name, f"must be a string, got {_type_name(raw[name])}")
    return Sample(input=raw["input"], output=raw["output"])


def _required(raw: dict, name: str, location: str) -> object:
    if name not in raw:
        raise DataError.in_field(location, name, "missing")
    return raw[name]


def _parse_json(path: Path, text: str, location: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{location}: line {error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from error


def _decode(path: Path, data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: {where}: not valid UTF-8 (byte {error.start})") from error


def _type_name(value: object) -> str:
    """JSON's names for what a value is, since that is what the file's author wrote."""
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def build_requests(task: Task, settings: PromptSettings) -> list[EvalItem]:
    """One request per sample (the first `max_samples`), each with the task's first `num_few_shots` few-shots.

    llm-jp-eval stops when a task has fewer few-shots than asked for, and so do we: a score labelled
    4-shot must be 4-shot.
    """
    if len(task.few_shots) < settings.num_few_shots:
        raise ConfigError(
            f"{task.source}: task '{task.name}' has {len(task.few_shots)} few-shot examples, "
            f"{settings.num_few_shots} asked for (lower the number of few-shots)"
        )
    few_shots = task.few_shots[: settings.num_few_shots]
    samples = task.samples if settings.max_samples is None else task.samples[: settings.max_samples]
    return [
        EvalItem(
            task=task.name,
            index=index,
            input=sample.input,
            reference=sample.output,
            payload=_payload(task, few_shots, sample.input, settings),
        )
        for index, sample in enumerate(samples)
    ]


def _payload(task: Task, few_shots: tuple[Sample, ...], text: str, settings: PromptSettings) -> dict:
    body: dict = (
        {"prompt": alpaca_prompt(task.instruction, few_shots, text)}
        if settings.mode == "alpaca"
        else {"messages": chat_messages(task.instruction, few_shots, text)}
    )
    return {**body, "max_tokens": task.output_length, "temperature": settings.temperature, **settings.sampling}


def alpaca_prompt(instruction: str, few_shots: tuple[Sample, ...], text: str) -> str:
    """llm-jp-eval's prompt text: preamble and instruction, each few-shot answered, then the open question."""
    shots = "".join(f"\n\n### 入力:\n{shot.input}\n\n### 応答:\n{shot.output}" for shot in few_shots)
    return f"{ALPACA_PREAMBLE}\n\n### 指示:\n{instruction}{shots}\n\n### 入力:\n{text}\n\n### 応答:\n"


def chat_messages(instruction: str, few_shots: tuple[Sample, ...], text: str) -> list[dict]:
    """The same content as chat turns: the instruction as system message, few-shots as answered exchanges."""
    turns = [{"role": "system", "content": instruction}]
    for shot in few_shots:
        turns += [{"role": "user", "content": shot.input}, {"role": "assistant", "content": shot.output}]
    return [*turns, {"role": "user", "content": text}]
