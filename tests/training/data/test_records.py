"""Data loading: valid formats load, every kind of bad record is named precisely, the split is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import SAMPLE, SAMPLE_EVAL
from training.data.records import AlpacaRecord, ChatRecord, DataError, load_records, select_records, split_records

GOOD = {"instruction": "日本一高い山は？", "input": "", "output": "富士山です。"}


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def encode(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def test_sample_dataset_is_valid_and_large_enough():
    records = load_records([SAMPLE]).records
    assert len(records) >= 300
    assert all(isinstance(r, AlpacaRecord) for r in records)
    assert any("地鎮祭" in r.instruction for r in records)
    spec = json.loads(SAMPLE_EVAL.read_text(encoding="utf-8"))
    assert len(spec["items"]) == 24
    for item in spec["items"]:
        assert item["answer"] in records[item["index"]].output


def test_alpaca_json_array_and_chat_jsonl_load(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GOOD, {**GOOD, "input": "静岡県"}]), encoding="utf-8")
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}]}  # fmt: skip
    write_jsonl(tmp_path / "c.jsonl", [encode(chat)])
    records = load_records([tmp_path / "a.json", tmp_path / "c.jsonl"]).records
    assert [type(r) for r in records] == [AlpacaRecord, AlpacaRecord, ChatRecord]
    assert records[1].input == "静岡県"
    assert records[2].source.endswith("c.jsonl: line 1")


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (encode({"instruction": "q", "input": ""}), "line 2: field 'output': missing"),
        (encode({"instruction": "q", "output": 3}), "line 2: field 'output': must be a string, got int"),
        (encode({"instruction": "q", "output": "  "}), "line 2: field 'output': is empty"),
        (encode({"instruction": ["q"], "output": "a"}), "line 2: field 'instruction': must be a string"),
        (encode({"instruction": "q", "input": 5, "output": "a"}), "line 2: field 'input': must be a string"),
        (b'{"instruction": "q", "output": ', "line 2: invalid JSON"),
        (b'{"instruction": "\xff\xfe", "output": "a"}', "line 2: not valid UTF-8"),
        (encode(["not", "an", "object"]), "line 2: a record must be a JSON object"),
        (encode({"messages": [{"role": "user", "content": "q"}]}), "must end with a non-empty assistant"),
        (encode({"messages": [{"role": "bot", "content": "q"}]}), "field 'messages[0].role': must be one of"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad_line, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [encode(GOOD), bad_line, encode(GOOD)])
    with pytest.raises(DataError) as error:
        load_records([path])
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_bad_record_in_json_array_is_named_by_record_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "q"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json: record 3: field 'output': missing"):
        load_records([path])


def test_skip_invalid_reports_every_skipped_record(tmp_path):
    lines = [encode(GOOD), b"{broken", encode({"instruction": "q", "output": ""}), encode(GOOD), b"\xff"]
    loaded = load_records([write_jsonl(tmp_path / "mixed.jsonl", lines)], skip_invalid=True)
    assert len(loaded.records) == 2
    assert len(loaded.skipped) == 3
    assert [s.split(": ")[1] for s in loaded.skipped] == ["line 2", "line 3", "line 5"]
    assert loaded.records_per_file == {str(tmp_path / "mixed.jsonl"): 2}  # valid ones, for the manifest


def test_all_invalid_is_an_error_even_when_skipping(tmp_path):
    with pytest.raises(DataError, match="no usable records"):
        load_records([write_jsonl(tmp_path / "x.jsonl", [b"{"])], skip_invalid=True)


def test_split_is_deterministic_and_content_based():
    records = load_records([SAMPLE]).records
    train, validation = split_records(records, 0.1, seed=0)
    again_train, again_validation = split_records(list(reversed(records)), 0.1, seed=0)
    assert {r.source for r in validation} == {r.source for r in again_validation}
    assert len(train) + len(validation) == len(records) == len(again_train) + len(again_validation)
    assert 15 <= len(validation) <= 60
    _, other_seed = split_records(records, 0.1, seed=1)
    assert {r.source for r in other_seed} != {r.source for r in validation}


def test_selected_records_keep_the_listed_order_and_a_missing_one_is_an_error():
    records = load_records([SAMPLE]).records
    chosen = select_records(records, [21, 3])
    assert [r.source for r in chosen] == [f"{SAMPLE}: line 22", f"{SAMPLE}: line 4"]
    assert select_records(records, None) is records
    with pytest.raises(DataError, match=r"data.records: \[350, -1\] out of range; the data has 350 records"):
        select_records(records, [0, 350, -1])
