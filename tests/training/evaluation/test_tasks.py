"""Evaluation tasks: llm-jp-eval's files and our JSONL load, bad files are named precisely, prompts match theirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.errors import ConfigError, DataError, TrainingError
from training.evaluation.tasks import PromptSettings, Sample, build_requests, load_task, load_tasks

INSTRUCTION = "質問を入力とし、回答を出力してください。回答の他には何も含めないことを厳守してください。"


def jemhopqa(count: int = 5, few_shots: list | None = None, **changes) -> dict:
    """A task in llm-jp-eval v1.3.0's evaluation schema (`asdict(OutputInfo)`), with a key it may add."""
    task = {
        "instruction": INSTRUCTION,
        "output_length": 15,
        "metrics": ["char_f1"],
        "few_shots": few_shots or [],
        "samples": [{"input": f"質問：問題{i}？", "output": f"答え{i}"} for i in range(count)],
        "label_list": [],
    }
    return {**task, **changes}


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


def write_lines(path: Path, *lines: object) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


HEADER = {"instruction": "次の単語を英語にしてください。", "output_length": 8, "metrics": ["exact_match"]}


def test_an_llm_jp_eval_file_loads_as_written(tmp_path):
    shots = [{"input": "質問：例？", "output": "例"}]
    task = load_task(write_json(tmp_path / "jemhopqa.json", jemhopqa(few_shots=shots)))
    assert task.name == "jemhopqa"
    assert (task.instruction, task.output_length, task.metrics) == (INSTRUCTION, 15, ("char_f1",))
    assert task.few_shots == (Sample("質問：例？", "例"),)
    assert task.samples[4] == Sample("質問：問題4？", "答え4")
    assert task.source == tmp_path / "jemhopqa.json"


def test_our_jsonl_file_loads_header_then_one_sample_per_line(tmp_path):
    header = {**HEADER, "few_shots": [{"input": "犬", "output": "dog"}]}
    path = write_lines(
        tmp_path / "words.jsonl", header, {"input": "猫", "output": "cat"}, "", {"input": "鳥", "output": "bird"}
    )
    task = load_task(path)
    assert (task.name, task.output_length, task.metrics) == ("words", 8, ("exact_match",))
    assert task.few_shots == (Sample("犬", "dog"),)
    assert task.samples == (Sample("猫", "cat"), Sample("鳥", "bird"))


def test_an_llm_jp_eval_test_folder_takes_few_shots_from_its_train_split(tmp_path):
    """llm-jp-eval's get_few_shot_samples: `<dataset_dir>/<version>/evaluation/train/<task>.json`, from the top."""
    evaluation = tmp_path / "dataset" / "1.3.0" / "evaluation"
    write_json(evaluation / "test" / "jemhopqa.json", jemhopqa())
    write_json(evaluation / "test" / "niilc.json", jemhopqa(count=2))
    train = jemhopqa(count=0)
    train["samples"] = [{"input": f"訓練{i}", "output": f"正解{i}"} for i in range(6)]
    write_json(evaluation / "train" / "jemhopqa.json", train)

    tasks = load_tasks(evaluation / "test")

    assert [task.name for task in tasks] == ["jemhopqa", "niilc"]
    assert tasks[0].few_shots[:2] == (Sample("訓練0", "正解0"), Sample("訓練1", "正解1"))
    assert len(tasks[0].few_shots) == 6
    assert tasks[1].few_shots == ()  # no train file beside it


def test_a_directory_loads_json_and_jsonl_in_name_order_and_refuses_two_tasks_of_one_name(tmp_path):
    write_lines(tmp_path / "b.jsonl", HEADER, {"input": "x", "output": "y"})
    write_json(tmp_path / "a.json", jemhopqa())
    (tmp_path / "notes.txt").write_text("not a task")
    assert [task.name for task in load_tasks(tmp_path)] == ["a", "b"]
    write_json(tmp_path / "b.json", jemhopqa())
    with pytest.raises(DataError, match=r"task name 'b' is also the name of .*b\.json"):
        load_tasks(tmp_path)
    with pytest.raises(DataError, match=r"no \*\.json or \*\.jsonl task files"):
        load_tasks((tmp_path / "empty").mkdir() or tmp_path / "empty")


BAD_JSON_FILES = [
    ({"output_length": 15, "metrics": ["char_f1"], "samples": []}, "field 'instruction': missing"),
    (jemhopqa(instruction=""), "field 'instruction': is empty"),
    (jemhopqa(output_length="15"), "field 'output_length': must be a positive integer, got '15'"),
    (jemhopqa(output_length=0), "field 'output_length': must be a positive integer, got 0"),
    (jemhopqa(output_length=True), "field 'output_length': must be a positive integer, got True"),
    (jemhopqa(metrics="char_f1"), "field 'metrics': must be a non-empty list of metric names"),
    (jemhopqa(metrics=[]), "field 'metrics': must be a non-empty list of metric names"),
    (jemhopqa(metrics=["char_f1", 3]), "field 'metrics[1]': must be a metric name, got 3"),
    (jemhopqa(metrics=["char_f1", "rouge2"]), "field 'metrics[1]': unknown metric 'rouge2'; known: exact_match"),
    (jemhopqa(count=0), "field 'samples': is empty; a task needs at least one sample"),
    ({k: v for k, v in jemhopqa().items() if k != "samples"}, "field 'samples': missing"),
    (jemhopqa(samples={"input": "a"}), "field 'samples': must be a list of {input, output} objects, got object"),
    (jemhopqa(few_shots=[{"output": "x"}]), "field 'few_shots[0].input': missing"),
    ([jemhopqa()], "a .json task file must hold one JSON object, got array"),
]


@pytest.mark.parametrize(("content", "message"), BAD_JSON_FILES)
def test_a_bad_json_task_names_file_and_field(tmp_path, content, message):
    path = write_json(tmp_path / "task.json", content)
    with pytest.raises(DataError) as caught:
        load_task(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)  # the CLI prints it as one line


def test_a_sample_of_the_wrong_type_is_named_by_its_exact_path(tmp_path):
    task = jemhopqa()
    task["samples"][3]["output"] = 42
    path = write_json(tmp_path / "task.json", task)
    with pytest.raises(DataError, match=r"task\.json: field 'samples\[3\]\.output': must be a string, got integer$"):
        load_task(path)
    task["samples"][3] = "質問"
    write_json(path, task)
    with pytest.raises(DataError, match=r"field 'samples\[3\]': a sample must be an object .*, got string$"):
        load_task(path)


def test_broken_json_names_file_and_line(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{\n  "instruction": "x",\n  "output_length": 15,,\n}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}: line 3: invalid JSON: Expecting property name"):
        load_task(path)
    path.write_bytes(b'{"instruction": "\xff"}')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_task(path)


SAMPLE = {"input": "猫", "output": "cat"}
BAD_JSONL_FILES = [
    ((), "empty file; the first line must be the task header"),
    ((SAMPLE, SAMPLE), "line 1: the first line must be the task header {instruction, output_length, metrics}, got a"),
    (({**HEADER, "few_shot": []}, SAMPLE), "line 1: field 'few_shot': unknown header key"),
    (({**HEADER, "samples": [SAMPLE]}, SAMPLE), "line 1: field 'samples': not allowed in a .jsonl header"),
    (({**HEADER, "output_length": -1}, SAMPLE), "line 1: field 'output_length': must be a positive integer, got -1"),
    (({**HEADER, "few_shots": [{"input": "a", "output": None}]}, SAMPLE), "line 1: field 'few_shots[0].output': must"),
    ((HEADER,), "no samples after the header line"),
    ((HEADER, SAMPLE, "", {"input": "鳥"}), "line 4: field 'output': missing"),
    ((HEADER, SAMPLE, {"input": "鳥", "output": ["bird"]}), "line 3: field 'output': must be a string, got array"),
    ((HEADER, SAMPLE, {"input": "鳥", "output": "b", "id": 3}), "line 3: field 'id': unknown key"),
    ((HEADER, '{"input": "鳥", "output": }'), "line 2: invalid JSON: Expecting value (column 26)"),
    ((HEADER, '["鳥", "bird"]'), "line 2: a sample must be an object with 'input' and 'output', got array"),
]


@pytest.mark.parametrize(("lines", "message"), BAD_JSONL_FILES)
def test_a_bad_jsonl_task_names_file_line_and_field(tmp_path, lines, message):
    path = write_lines(tmp_path / "task.jsonl", *lines) if lines else tmp_path / "task.jsonl"
    if not lines:
        path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_task(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_path_or_unknown_suffix_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_tasks(tmp_path / "nothing")
    (tmp_path / "task.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported task file type '\.csv'"):
        load_task(tmp_path / "task.csv")
    assert issubclass(DataError, TrainingError)


def test_the_alpaca_prompt_is_llm_jp_evals_byte_for_byte(tmp_path):
    """The expected text is written by hand from llm-jp-eval's source, quoted below."""
    # llm-jp-eval src/llm_jp_eval/utils.py, get_evaluation_prompt, the branch without custom_prompt_template
    # (read in the copies of that file kept by wandb/llm-leaderboard, `language == "ja"`, and checked against
    # llm-jp-eval's PROMPTS.md of PR #91, which shows the same layout):
    #     system_message_intro = f"以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n{instruction}"  # noqa: E501
    #     few_shots_template = "\n\n### 入力:\n{input}\n\n### 応答:\n"
    #     system_message = system_message_intro
    #     for few_shot in few_shots:
    #         system_message += f"\n\n### {input_heading}:\n{replace_braces(few_shot.input)}\n\n### {response_heading}:\n{few_shot.output}"  # noqa: E501
    #     system_message += few_shots_template
    #     return PromptTemplate(input_variables=["input"], template=system_message)
    # with input_heading = "入力", response_heading = "応答". get_few_shot_samples returns
    # `samples[:num_few_shots]` of the train split; the generator's max_new_tokens is the task's output_length.
    # replace_braces only undoes LangChain's brace escaping, and this text has no braces.
    shots = [
        {"input": "質問：日本一高い山は？", "output": "富士山"},
        {"input": "質問：日本一長い川は？", "output": "信濃川"},
    ]
    task = load_task(write_json(tmp_path / "t.json", jemhopqa(count=1, few_shots=shots)))

    [item] = build_requests(task, PromptSettings(num_few_shots=2))

    expected = (
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n"
        "\n"
        "### 指示:\n"
        "質問を入力とし、回答を出力してください。回答の他には何も含めないことを厳守してください。\n"
        "\n"
        "### 入力:\n"
        "質問：日本一高い山は？\n"
        "\n"
        "### 応答:\n"
        "富士山\n"
        "\n"
        "### 入力:\n"
        "質問：日本一長い川は？\n"
        "\n"
        "### 応答:\n"
        "信濃川\n"
        "\n"
        "### 入力:\n"
        "質問：問題0？\n"
        "\n"
        "### 応答:\n"
    )
    assert item.payload["prompt"].encode("utf-8") == expected.encode("utf-8")
    assert item.payload == {"prompt": expected, "max_tokens": 15, "temperature": 0.0}
    assert (item.task, item.index, item.input, item.reference) == ("t", 0, "質問：問題0？", "答え0")


def test_zero_shot_prompt_has_no_examples(tmp_path):
    task = load_task(write_json(tmp_path / "t.json", jemhopqa(count=1)))
    [item] = build_requests(task, PromptSettings(num_few_shots=0))
    assert item.payload["prompt"].endswith(f"### 指示:\n{INSTRUCTION}\n\n### 入力:\n質問：問題0？\n\n### 応答:\n")


def test_chat_mode_asks_the_same_as_turns(tmp_path):
    shots = [{"input": "犬", "output": "dog"}, {"input": "猫", "output": "cat"}, {"input": "馬", "output": "horse"}]
    path = write_lines(tmp_path / "w.jsonl", {**HEADER, "few_shots": shots}, {"input": "鳥", "output": "bird"})
    settings = PromptSettings(num_few_shots=2, mode="chat", temperature=0.7, sampling={"top_p": 0.9, "seed": 1})

    [item] = build_requests(load_task(path), settings)

    assert item.payload == {
        "messages": [
            {"role": "system", "content": HEADER["instruction"]},
            {"role": "user", "content": "犬"},
            {"role": "assistant", "content": "dog"},
            {"role": "user", "content": "猫"},
            {"role": "assistant", "content": "cat"},
            {"role": "user", "content": "鳥"},
        ],
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 1,
    }


def test_max_samples_takes_the_first_samples_and_none_takes_all(tmp_path):
    task = load_task(write_json(tmp_path / "t.json", jemhopqa(count=7)))
    assert [item.index for item in build_requests(task, PromptSettings(num_few_shots=0, max_samples=3))] == [0, 1, 2]
    assert len(build_requests(task, PromptSettings(num_few_shots=0, max_samples=None))) == 7
    assert len(build_requests(task, PromptSettings(num_few_shots=0))) == 7  # default 100, fewer samples


def test_asking_for_more_few_shots_than_the_task_has_stops(tmp_path):
    task = load_task(write_json(tmp_path / "t.json", jemhopqa(few_shots=[{"input": "a", "output": "b"}])))
    with pytest.raises(ConfigError, match="task 't' has 1 few-shot examples, 4 asked for"):
        build_requests(task, PromptSettings())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_few_shots": -1}, "num_few_shots must be an integer >= 0"),
        ({"max_samples": 0}, "max_samples must be an integer >= 1 or None"),
        ({"mode": "instruct"}, "mode must be 'alpaca' or 'chat'"),
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"sampling": {"max_tokens": 5, "top_p": 1}}, r"sampling settings may not set \['max_tokens'\]"),
    ],
)
def test_bad_prompt_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        PromptSettings(**settings)
