"""Open questions from JSONL, ours or FastChat's single-turn format: every mistake names the file, the line
and the field, so a question set is fixed before any model is asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.data.records import jsonl_values
from training.errors import DataError

QUESTION_FIELDS = {"id": True, "category": True, "question": True, "reference": False}  # name: required


@dataclass(frozen=True)
class Question:
    """One open question; `reference` is a model answer the judge compares against (math, reasoning, code)."""

    id: str
    category: str
    question: str
    reference: str | None = None


def load_questions(path: Path) -> list[Question]:
    """Questions from JSONL (`{"id", "category", "question", "reference"?}` a line, or FastChat's single-turn
    `{"question_id", "category", "turns"}`; blank lines skipped). Every mistake names the file, the line and the
    field."""
    path = Path(path)
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for number, location, record in jsonl_values(path):
        if not isinstance(record, dict):
            raise DataError(f"{location}: must be a JSON object with {', '.join(QUESTION_FIELDS)}")
        question = _question(record, location)
        if question.id in first_line:
            raise DataError.in_field(location, "id", f"{question.id!r} is also on line {first_line[question.id]}")
        first_line[question.id] = number
        questions.append(question)
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def _question(record: dict, location: str) -> Question:
    if "turns" in record or "question_id" in record:
        record = _from_fastchat(record, location)
    for name in record:
        if name not in QUESTION_FIELDS:
            raise DataError.in_field(location, name, f"unknown; the fields are {', '.join(QUESTION_FIELDS)}")
    for name, required in QUESTION_FIELDS.items():
        if name not in record:
            if required:
                raise DataError.in_field(location, name, "missing")
            continue
        if not isinstance(record[name], str) or not record[name].strip():
            raise DataError.in_field(location, name, f"must be a non-empty string, got {record[name]!r}")
    return Question(**record)


def _from_fastchat(record: dict, location: str) -> dict:
    """FastChat's question format (`{"question_id", "category", "turns": [...]}`), which ja-vicuna-qa-benchmark's
    `data/jp_bench/question.jsonl` uses, read as is. Single-turn only: a second turn is refused rather than
    dropped (Japanese MT-Bench's two-turn questions need a multi-turn judge, which this is not)."""
    unknown = sorted(set(record) - {"question_id", "category", "turns"})
    if unknown:
        raise DataError.in_field(location, unknown[0], "unknown in a FastChat question (question_id, category, turns)")
    turns = record.get("turns")
    if not isinstance(turns, list) or len(turns) != 1:
        got = f"{len(turns)} turns" if isinstance(turns, list) else repr(turns)
        raise DataError.in_field(location, "turns", f"must hold exactly one question (single-turn judging), got {got}")
    if "question_id" not in record:
        raise DataError.in_field(location, "question_id", "missing")
    return {"id": str(record["question_id"]), "category": record.get("category"), "question": turns[0]}
