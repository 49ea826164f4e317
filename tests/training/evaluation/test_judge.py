"""The LLM judge with a scripted fake runner, its questions file, and the shipped evaluation data."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from training.errors import DataError, TrainingError
from training.evaluation.judge.grading import grade_pairwise, grade_single
from training.evaluation.judge.prompts import (
    PAIR,
    PAIR_REFERENCE,
    PAIR_RETRY,
    SINGLE,
    SINGLE_REFERENCE,
    SINGLE_RETRY,
    PromptTemplate,
)
from training.evaluation.judge.questions import Question, load_questions
from training.evaluation.judge.verdicts import combine_orders, parse_rating, parse_verdict
from training.licences import data_terms

REPO = Path(__file__).resolve().parents[3]
OPEN_QUESTIONS = REPO / "data" / "eval" / "ja_open_questions.jsonl"
JA_QA = REPO / "data" / "eval" / "ja_qa.json"


@dataclass(frozen=True)
class FakeEndpoint:
    base_url: str
    model: str
    api_key: str | None = None


@dataclass(frozen=True)
class FakeAnswer:
    text: str
    finish_reason: str | None = "stop"
    cached: bool = False
    usage: dict | None = None


@dataclass
class ScriptedRunner:
    """A runner whose models answer "<model>の回答: <question>" and whose judge replies as `judge` scripts it
    (from the judge's user message and whether it is a retry). Like the real runner it caches by payload: an
    identical request returns the first reply again."""

    judge: Callable[[str, bool], str]
    calls: list[tuple[str, list[dict], str]] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)

    def run(self, endpoint: FakeEndpoint, payloads: list[dict], description: str = "") -> list[FakeAnswer]:
        self.calls.append((endpoint.model, payloads, description))
        return [FakeAnswer(self._reply(endpoint, payload)) for payload in payloads]

    def _reply(self, endpoint: FakeEndpoint, payload: dict) -> str:
        key = json.dumps([endpoint.model, payload], ensure_ascii=False, sort_keys=True)
        if key not in self.cache:
            messages = payload["messages"]
            if endpoint.model == "judge":
                user = next(m["content"] for m in messages if m["role"] == "user")
                self.cache[key] = self.judge(user, len(messages) > 2)
            else:
                self.cache[key] = f"{endpoint.model}の回答: {messages[-1]['content']}"
        return self.cache[key]

    def judge_payloads(self) -> list[dict]:
        return [payload for model, payloads, _ in self.calls if model == "judge" for payload in payloads]


MODEL = FakeEndpoint("http://model", "tsumugi-lora")
BASE = FakeEndpoint("http://model", "base")
JUDGE = FakeEndpoint("http://judge", "judge")
QUESTIONS = [
    Question("q1", "writing", "手紙を書いてください。"),
    Question("q2", "stem", "光合成を説明してください。"),
    Question("q3", "math", "2 + 3 は？", reference="5"),
]


def by_question(replies: dict[str, str], retries: dict[str, str] | None = None) -> Callable[[str, bool], str]:
    """A judge replying by which question its user message is about, differently on a retry."""

    def judge(user: str, retry: bool) -> str:
        table = (retries or {}) if retry else replies
        return next(reply for question, reply in table.items() if question in user)

    return judge


def test_ratings_are_the_last_double_bracketed_number_from_1_to_10():
    assert parse_rating("丁寧で正確な回答です。\n[[8]]") == 8
    assert parse_rating("評価: ［［７］］") == 7  # full width, as Japanese judges write it
    assert parse_rating("[[7.5]]") == 7.5
    assert parse_rating("形式は[[5]]のように書きます。……総合して[[9]]") == 9
    for unparsable in ("[[11]]", "[[0]]", "8点です。", "[8]", "", None):
        assert parse_rating(unparsable) is None


def test_verdicts_are_the_last_double_bracketed_letter():
    assert parse_verdict("Aの方が正確です。[[A]]") == "A"
    assert parse_verdict("[[B]]") == "B"
    assert parse_verdict("同程度です。[[C]]") == "tie"
    assert parse_verdict("［［Ｂ］］") == "B"
    assert parse_verdict("[[A]]か[[B]]で答えます。……結論として[[B]]") == "B"
    assert parse_verdict("A が良い") is None


def test_single_grading_parses_retries_once_with_a_different_payload_then_excludes():
    runner = ScriptedRunner(
        by_question(
            {"手紙": "よく書けています。[[8]]", "光合成": "よい説明です。", "2 + 3": "正しい。"},
            retries={"光合成": "[[6]]", "2 + 3": "正しいと思います。"},
        )
    )
    grading = grade_single(runner, MODEL, JUDGE, QUESTIONS, answer_max_tokens=64)

    assert [grade.score for grade in grading.grades] == [8, 6, None]
    assert grading.parse_failures == 1 and grading.retries == 2
    assert grading.grades[0].judge_texts == ("よく書けています。[[8]]",)
    assert grading.grades[1].judge_texts == ("よい説明です。", "[[6]]")
    assert grading.grades[1].answer == "tsumugi-loraの回答: 光合成を説明してください。"

    answers, first, retry = runner.calls
    assert answers[0] == "tsumugi-lora" and all(p["temperature"] == 0 and p["max_tokens"] == 64 for p in answers[1])
    assert (first[0], len(first[1]), retry[0], len(retry[1])) == ("judge", 3, "judge", 2)
    original, retried = first[1][1], retry[1][0]
    assert retried != original  # the runner's cache would otherwise return the failure again
    assert retried["messages"][:2] == original["messages"]
    assert retried["messages"][2:] == [
        {"role": "assistant", "content": "よい説明です。"},
        {"role": "user", "content": SINGLE_RETRY},
    ]
    scores = grading.item_scores()
    assert scores.values[:2] == (8.0, 6.0) and math.isnan(scores.values[2])
    assert scores.item_ids == ("q1", "q2", "q3") and scores.metric == "judge_score"


def test_an_out_of_range_rating_is_a_parse_failure():
    runner = ScriptedRunner(lambda user, retry: "満点以上です。[[11]]")
    grading = grade_single(runner, MODEL, JUDGE, QUESTIONS[:1])
    assert grading.grades[0].score is None
    assert grading.grades[0].judge_texts == ("満点以上です。[[11]]", "満点以上です。[[11]]")
    assert grading.parse_failures == 1


def test_records_hold_the_judge_model_prompt_hashes_temperature_and_raw_texts():
    runner = ScriptedRunner(lambda user, retry: "[[7]]")
    grading = grade_single(runner, MODEL, JUDGE, QUESTIONS, temperature=0.0)
    record = json.loads(json.dumps(grading.to_json(), ensure_ascii=False))

    assert record["model"] == "tsumugi-lora" and record["judge_model"] == "judge" and record["temperature"] == 0.0
    expected = hashlib.sha256(
        json.dumps({"system": SINGLE.system, "user": SINGLE.user, "retry": SINGLE.retry}, ensure_ascii=False).encode()
    ).hexdigest()
    assert record["prompt_sha256"] == {"single": expected, "single-reference": SINGLE_REFERENCE.sha256}
    assert SINGLE.sha256 != SINGLE_REFERENCE.sha256
    assert PromptTemplate("single", SINGLE.system + "。", SINGLE.user, SINGLE.retry).sha256 != SINGLE.sha256
    assert record["parse_failures"] == 0
    assert [grade["judge_texts"] for grade in record["grades"]] == [["[[7]]"]] * 3
    assert all(payload["temperature"] == 0.0 for payload in runner.judge_payloads())


def test_questions_with_a_reference_are_graded_against_it():
    runner = ScriptedRunner(lambda user, retry: "[[9]]")
    grading = grade_single(runner, MODEL, JUDGE, QUESTIONS)
    assert [grade.prompt for grade in grading.grades] == ["single", "single", "single-reference"]
    reference_request = runner.judge_payloads()[2]["messages"]
    assert reference_request[0]["content"] == SINGLE_REFERENCE.system
    assert "[参考解答の始まり]\n5\n[参考解答の終わり]" in reference_request[1]["content"]
    assert "[参考解答" not in runner.judge_payloads()[0]["messages"][1]["content"]


def test_a_prompt_change_is_deliberate():
    """Judge scores depend on every word of the prompt; a change must update these hashes, and the results
    recorded before it stay tellable apart by theirs."""
    assert {t.name: t.sha256 for t in (SINGLE, SINGLE_REFERENCE, PAIR, PAIR_REFERENCE)} == {
        "single": "b8193ac2dd97a44e1247aad32e96851ef0c7c5848767caac7dd955aa6459d242",
        "single-reference": "184f9e96c8efbbd644a0a2a776c7cf8132076e60e8f2a7a46b372ee0611556b6",
        "pair": "67849247d0bac70af1550882b45d9774082c79063560925cc15bdfe9526cd4c6",
        "pair-reference": "595ebe65e9653d66b5865dde1c6e4f2e1c15f264e65366b1e0411c5537791ef3",
    }


def test_the_rubric_is_stated_in_the_prompt():
    for criterion in ("有用性", "関連性", "正確性", "深さ", "日本語の質", "日本語以外"):
        assert criterion in SINGLE.system
    assert "[[N]]" in SINGLE.system and "[[A]]" in PAIR.system and "[[C]]" in PAIR.system


def lora_is_better(user: str, retry: bool) -> str:
    """A consistent judge on q1 (prefers the adapter's answer wherever it is shown), position-biased on q2
    (always the first answer), a tie on q3, and on q4 unparsable whenever the base model's answer is first."""
    first_answer = user.split("[アシスタントAの回答の始まり]\n", 1)[1]
    lora_first = first_answer.startswith("tsumugi-lora")
    if "手紙" in user:
        return "[[A]]" if lora_first else "[[B]]"
    if "光合成" in user:
        return "最初の回答が良い。[[A]]"
    if "2 + 3" in user:
        return "どちらも正しい。[[C]]"
    return "[[A]]" if lora_first else "判断できません。"


def test_pairwise_judges_both_orders_and_a_disagreement_is_a_tie():
    questions = [*QUESTIONS, Question("q4", "knowledge", "富士山の高さは？")]
    runner = ScriptedRunner(lora_is_better)
    grading = grade_pairwise(runner, MODEL, BASE, JUDGE, questions)

    assert [(g.a_first, g.b_first, g.verdict) for g in grading.grades] == [
        ("A", "A", "A"),  # both orders prefer model A, the adapter
        ("A", "B", "tie"),  # position bias: the orders disagree
        ("tie", "tie", "tie"),
        ("A", None, None),  # the base-first order failed twice: excluded
    ]
    assert grading.parse_failures == 1 and grading.excluded == 1
    assert grading.grades[3].judge_texts_b_first == ("判断できません。", "判断できません。")

    first_round = runner.calls[2][1]
    assert len(first_round) == 8
    a_shown_first = first_round[0]["messages"][1]["content"]
    b_shown_first = first_round[4]["messages"][1]["content"]
    assert a_shown_first.index("tsumugi-loraの回答") < a_shown_first.index("baseの回答")
    assert b_shown_first.index("baseの回答") < b_shown_first.index("tsumugi-loraの回答")
    (retry,) = runner.calls[3][1]
    assert retry["messages"][-1] == {"role": "user", "content": PAIR_RETRY}

    verdicts = grading.verdicts()
    assert (verdicts.model_a, verdicts.model_b) == ("tsumugi-lora", "base")
    assert verdicts.verdicts == ("A", "tie", "tie", None) and verdicts.item_ids == ("q1", "q2", "q3", "q4")
    record = json.loads(json.dumps(grading.to_json(), ensure_ascii=False))
    assert set(record["prompt_sha256"]) == {"pair", "pair-reference"} and record["judge_model"] == "judge"


def test_orders_combine_into_one_verdict():
    assert combine_orders("A", "A") == "A"
    assert combine_orders("B", "B") == "B"
    assert combine_orders("A", "B") == "tie"
    assert combine_orders("A", "tie") == "tie"
    assert combine_orders(None, "A") is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"id": "a", "category": "x", "question": "q"}', '{"id": "b", "category": "x"}'],
            "line 2: field 'question': missing",
        ),
        (['{"id": "a", "category": "x", "question": "q"', ""], "line 1: invalid JSON"),
        (['["a", "x", "q"]'], "line 1: must be a JSON object"),
        (['{"id": 3, "category": "x", "question": "q"}'], "line 1: field 'id': must be a non-empty string"),
        (['{"id": "a", "category": "x", "question": " "}'], "line 1: field 'question': must be a non-empty string"),
        (['{"id": "a", "category": "x", "question": "q", "refrence": "r"}'], "line 1: field 'refrence': unknown"),
        (
            ['{"id": "a", "category": "x", "question": "q"}', "", '{"id": "a", "category": "y", "question": "r"}'],
            "line 3: field 'id': 'a' is also on line 1",
        ),
        (["", "  "], "no questions"),
    ],
)
def test_questions_file_errors_name_the_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        load_questions(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
    assert isinstance(raised.value, TrainingError)


def test_a_missing_questions_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"absent\.jsonl: no such file"):
        load_questions(tmp_path / "absent.jsonl")


def test_the_shipped_open_questions_load_and_cover_the_categories():
    questions = load_questions(OPEN_QUESTIONS)
    assert len(questions) == 20
    categories = {q.category for q in questions}
    assert categories == {
        "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities", "knowledge"
    }  # fmt: skip
    assert all(q.reference for q in questions if q.category in {"math", "reasoning", "coding"})
    assert data_terms(str(OPEN_QUESTIONS)).licence == "Apache-2.0"


def test_the_shipped_qa_task_is_in_llm_jp_eval_evaluation_format():
    """llm-jp-eval v1.3.0's evaluation file: `OutputInfo` (instruction, output_length, metrics, few_shots,
    samples) with `Sample`s of input and output; answers in the format the instruction asks for."""
    task = json.loads(JA_QA.read_text(encoding="utf-8"))
    assert set(task) == {"instruction", "output_length", "metrics", "few_shots", "samples"}
    assert task["instruction"] and isinstance(task["output_length"], int) and task["output_length"] > 0
    assert task["metrics"] == ["exact_match", "char_f1"]
    assert len(task["few_shots"]) == 4 and len(task["samples"]) == 40
    for sample in task["few_shots"] + task["samples"]:
        assert set(sample) == {"input", "output"} and sample["input"].startswith("質問：") and sample["output"]
        assert sample["output"] == sample["output"].strip() and "。" not in sample["output"]
        assert not any("０" <= char <= "９" for char in sample["output"])  # numbers in half-width digits
    inputs = [sample["input"] for sample in task["samples"]]
    assert len(set(inputs)) == len(inputs)
    assert not {s["input"] for s in task["few_shots"]} & set(inputs)
    assert data_terms(str(JA_QA)).licence == "Apache-2.0"


def test_the_shipped_arithmetic_answers_are_right():
    answers = {s["input"]: s["output"] for s in json.loads(JA_QA.read_text(encoding="utf-8"))["samples"]}
    computed = {
        "15足す28": 15 + 28,
        "100引く37": 100 - 37,
        "8かける7": 8 * 7,
        "144を12で割る": 144 // 12,
        "3の2乗と4の2乗": 3**2 + 4**2,
        "1から10までの整数": sum(range(1, 11)),
        "250の20パーセント": 250 * 20 // 100,
        "1時間は何秒": 60 * 60,
    }
    for phrase, value in computed.items():
        (answer,) = [output for question, output in answers.items() if phrase in question]
        assert answer == str(value), phrase


def test_fastchat_questions_are_read_as_they_are_published(tmp_path):
    """ja-vicuna-qa-benchmark's data/jp_bench/question.jsonl, unchanged; a two-turn question is refused."""
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "generic", "turns": ["時間管理のこつは？"]}) + "\n")
    (question,) = load_questions(path)
    assert (question.id, question.category, question.question) == ("1", "generic", "時間管理のこつは？")
    path.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["一つ目", "二つ目"]}) + "\n")
    with pytest.raises(DataError, match=r"question.jsonl: line 1: field 'turns': .*got 2 turns"):
        load_questions(path)
