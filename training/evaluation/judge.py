"""LLM-as-a-judge for open Japanese questions, in the style of MT-Bench and the Japanese Vicuna QA benchmark.

Open questions ("write a letter", "explain ...") have no single right answer to match, so a strong model grades
the answers. Two modes, as FastChat's `llm_judge` has them:

* single-answer grading: the judge reads one answer and ends its reply with `[[N]]`, N from 1 to 10;
* pairwise: the judge reads two answers and ends with `[[A]]`, `[[B]]` or `[[C]]` (tie). Judges prefer the
  answer shown first (position bias), so every pair is judged in both orders; a model wins a question only
  when both orders say so, and orders that disagree make a tie.

The rubric is ours, in Japanese, stated in the prompt: helpfulness, relevance, accuracy, depth and Japanese
quality, where an answer not written in Japanese (unless asked for) scores 3 at most. Questions with a
`reference` answer (math, reasoning, coding) are graded against it.

A reply without a parsable verdict is asked again once: the retry continues the conversation (the judge's own
reply, then "answer with [[N]] only"), so its payload differs from the first and the runner's payload cache
cannot hand back the same failure. A second failure is counted and the question is *excluded* from the scores
(never averaged in as -1, as ja-vicuna-qa-benchmark does, which drags a model down for the judge's mistakes).

Every result records what is needed to trust or redo it: the judge's model name, the sha256 of each prompt
template (all text the judge sees), the temperature (0 by default), parse failures, per-question scores or
verdicts, and the judge's raw replies.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from training.data import jsonl_values
from training.errors import DataError
from training.evaluation.report import ItemScores, PairwiseVerdicts

ANSWER_MAX_TOKENS = 1024
JUDGE_MAX_TOKENS = 1024
JUDGE_TEMPERATURE = 0.0
QUESTION_FIELDS = {"id": True, "category": True, "question": True, "reference": False}  # name: required
# Ratings as FastChat parses them, integer or decimal; 1 <= N <= 10 is checked after. NFKC first, so that
# full-width ［［８］］, which Japanese judges write, reads as [[8]].
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
VERDICTS = {"A": "A", "B": "B", "C": "tie"}
SWAPPED = {"A": "B", "B": "A", "tie": "tie"}


class Endpoint(Protocol):
    """What the judge needs of `training.evaluation.runner.Endpoint`: its model name, for the records."""

    @property
    def model(self) -> str: ...


class Reply(Protocol):
    """What the judge needs of `training.evaluation.runner.Answer`."""

    @property
    def text(self) -> str: ...

    @property
    def finish_reason(self) -> str | None: ...


class Completer(Protocol):
    """`training.evaluation.runner.Runner`: one reply per payload (an OpenAI request body without `model`)."""

    def run(self, endpoint: Endpoint, payloads: list[dict], description: str = "") -> Sequence[Reply]: ...


@dataclass(frozen=True)
class Question:
    """One open question; `reference` is a model answer the judge compares against (math, reasoning, code)."""

    id: str
    category: str
    question: str
    reference: str | None = None


@dataclass(frozen=True)
class PromptTemplate:
    """Everything a judge sees besides the question and answers: system prompt, user template, retry text."""

    name: str
    system: str
    user: str
    retry: str

    @property
    def sha256(self) -> str:
        """A fingerprint of the template, recorded with every result: scores from different prompts differ."""
        text = json.dumps({"system": self.system, "user": self.user, "retry": self.retry}, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def messages(self, **fields: str) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.format(**fields)}]


CRITERIA = (
    "評価の観点:\n"
    "1. 有用性: ユーザーが求めていることに実際に応えているか。\n"
    "2. 関連性: 質問に沿った内容か。質問と関係のない話や不要な前置きがないか。\n"
    "3. 正確性: 事実、計算、推論、プログラムに誤りがないか。\n"
    "4. 深さ: 質問に必要なだけの説明、根拠、具体例があるか。必要以上に長い必要はない。\n"
    "5. 日本語の質: 自然で正しい日本語か。日本語の質問には日本語で答える必要がある。"
    "質問が求めていないのに英語など他の言語で答えた回答、複数の言語が混ざって読みにくい回答、"
    "同じ文の繰り返しや途中で途切れた回答は、内容が正しくても低く評価する。"
)
SCALE = (
    "採点の目安:\n"
    "- 1〜2点: 質問に答えていない、または大部分が誤っている。\n"
    "- 3〜4点: 答えようとしているが、重大な誤りや欠落がある。\n"
    "- 5〜6点: おおむね正しいが、不正確な点や不足がある。\n"
    "- 7〜8点: 正確で役に立ち、小さな改善点があるだけ。\n"
    "- 9〜10点: 正確で十分、簡潔で自然な日本語の、模範となる回答。\n"
    "質問が求めていないのに日本語以外で書かれた回答は、内容が正しくても3点以下としてください。"
)
FAIRNESS = (
    "回答の長さで評価を決めないでください。長い回答が良い回答とは限りません。できるだけ客観的に評価してください。"
)
PAIR_FAIRNESS = "回答が示された順番やアシスタントの名前で判断しないでください。"
REFERENCE_RULE = (
    "参考解答が示されているので、回答の正しさは参考解答と照らし合わせて判断してください。"
    "結論が参考解答と食い違う回答は、説明が丁寧でも正確性を低く評価してください。"
)
SINGLE_OPENING = (
    "あなたは日本語のAIアシスタントの回答を採点する、公平で厳格な評価者です。"
    "ユーザーの質問とアシスタントの回答を読み、次の観点で回答の質を1から10の整数で評価してください。"
)
SINGLE_CLOSING = (
    "まず回答の良い点と問題点を簡潔に述べ、最後の行に評価を「[[N]]」の形式で書いてください"
    "（Nは1から10の整数。例: [[6]]）。"
)
PAIR_OPENING = (
    "あなたは日本語のAIアシスタントの回答を比較する、公平で厳格な評価者です。"
    "ユーザーの質問と、アシスタントAとアシスタントBの回答を読み、"
    "どちらが質問により良く答えているかを次の観点で判定してください。"
)
PAIR_CLOSING = (
    "まず2つの回答を比較して簡潔に説明し、最後の行に判定を書いてください。"
    "Aの方が良ければ[[A]]、Bの方が良ければ[[B]]、同程度なら[[C]]と書いてください。"
)


def _system(opening: str, rubric: str, fairness: str, closing: str) -> str:
    """A judge's system prompt: its task, the rubric, what not to judge by, and the output format last."""
    return "\n\n".join([opening, rubric, fairness, closing])


QUESTION_BLOCK = "[ユーザーの質問]\n{question}\n\n"
REFERENCE_BLOCK = "[参考解答の始まり]\n{reference}\n[参考解答の終わり]\n\n"
ANSWER_BLOCK = "[アシスタントの回答の始まり]\n{answer}\n[アシスタントの回答の終わり]"
PAIR_BLOCK = (
    "[アシスタントAの回答の始まり]\n{answer_a}\n[アシスタントAの回答の終わり]\n\n"
    "[アシスタントBの回答の始まり]\n{answer_b}\n[アシスタントBの回答の終わり]"
)
SINGLE_RETRY = "評価を「[[N]]」の形式（Nは1から10の整数）だけで、もう一度書いてください。"
PAIR_RETRY = "判定を [[A]]、[[B]]、[[C]] のどれか一つだけで、もう一度書いてください。"

SINGLE = PromptTemplate(
    "single",
    _system(SINGLE_OPENING, CRITERIA + "\n\n" + SCALE, FAIRNESS, SINGLE_CLOSING),
    QUESTION_BLOCK + ANSWER_BLOCK,
    SINGLE_RETRY,
)
SINGLE_REFERENCE = PromptTemplate(
    "single-reference",
    _system(SINGLE_OPENING, CRITERIA + "\n\n" + SCALE, FAIRNESS + REFERENCE_RULE, SINGLE_CLOSING),
    QUESTION_BLOCK + REFERENCE_BLOCK + ANSWER_BLOCK,
    SINGLE_RETRY,
)
PAIR = PromptTemplate(
    "pair",
    _system(PAIR_OPENING, CRITERIA, FAIRNESS + PAIR_FAIRNESS, PAIR_CLOSING),
    QUESTION_BLOCK + PAIR_BLOCK,
    PAIR_RETRY,
)
PAIR_REFERENCE = PromptTemplate(
    "pair-reference",
    _system(PAIR_OPENING, CRITERIA, FAIRNESS + PAIR_FAIRNESS + REFERENCE_RULE, PAIR_CLOSING),
    QUESTION_BLOCK + REFERENCE_BLOCK + PAIR_BLOCK,
    PAIR_RETRY,
)


@dataclass(frozen=True)
class Judged:
    """One judgement after at most one retry: the parsed value (None: unparsed twice) and the raw replies."""

    value: float | str | None
    texts: tuple[str, ...]


@dataclass(frozen=True)
class SingleGrade:
    """One question's grade: `score` None when the judge's reply could not be parsed, even on the retry."""

    question_id: str
    category: str
    prompt: str
    answer: str
    answer_finish_reason: str | None
    score: float | None
    judge_texts: tuple[str, ...]


@dataclass(frozen=True)
class SingleGrading:
    """A model's answers graded 1-10 by a judge, with what the grades depend on."""

    model: str
    judge_model: str
    temperature: float
    prompt_sha256: dict[str, str]
    grades: tuple[SingleGrade, ...]

    @property
    def parse_failures(self) -> int:
        return sum(grade.score is None for grade in self.grades)

    @property
    def retries(self) -> int:
        return sum(len(grade.judge_texts) > 1 for grade in self.grades)

    def item_scores(self, task: str = "judge") -> ItemScores:
        """The grades as report input: metric `judge_score`, NaN for a question the judge failed on."""
        return ItemScores(
            model=self.model,
            task=task,
            metric="judge_score",
            values=[math.nan if grade.score is None else grade.score for grade in self.grades],
            references=[""] * len(self.grades),
            item_ids=[grade.question_id for grade in self.grades],
        )

    def to_json(self) -> dict:
        return {**asdict(self), "parse_failures": self.parse_failures, "retries": self.retries}


@dataclass(frozen=True)
class PairGrade:
    """One question judged in both orders. Verdicts are in model terms ("A": model A's answer is better),
    whichever order the answers were shown in; `verdict` combines them (None: an order failed twice)."""

    question_id: str
    category: str
    prompt: str
    answer_a: str
    answer_b: str
    a_first: str | None
    b_first: str | None
    verdict: str | None
    judge_texts_a_first: tuple[str, ...]
    judge_texts_b_first: tuple[str, ...]


@dataclass(frozen=True)
class PairwiseGrading:
    """Model A against model B as a judge saw them, with what the verdicts depend on."""

    model_a: str
    model_b: str
    judge_model: str
    temperature: float
    prompt_sha256: dict[str, str]
    grades: tuple[PairGrade, ...]

    @property
    def parse_failures(self) -> int:
        """Judge replies (one per order) unparsed even on the retry."""
        return sum((grade.a_first is None) + (grade.b_first is None) for grade in self.grades)

    @property
    def excluded(self) -> int:
        """Questions without a verdict, because an order failed."""
        return sum(grade.verdict is None for grade in self.grades)

    def verdicts(self, task: str = "judge") -> PairwiseVerdicts:
        """The verdicts as report input, for a win rate with its interval."""
        return PairwiseVerdicts(
            model_a=self.model_a,
            model_b=self.model_b,
            task=task,
            verdicts=[grade.verdict for grade in self.grades],
            item_ids=[grade.question_id for grade in self.grades],
        )

    def to_json(self) -> dict:
        return {**asdict(self), "parse_failures": self.parse_failures, "excluded": self.excluded}


@dataclass(frozen=True)
class JudgeRun:
    """Every model graded, and the first (the baseline) compared with each other one."""

    single: list[SingleGrading]
    pairwise: list[PairwiseGrading]

    @property
    def parse_failures(self) -> int:
        return sum(g.parse_failures for g in self.single) + sum(p.parse_failures for p in self.pairwise)

    def to_json(self) -> dict:
        return {"single": [g.to_json() for g in self.single], "pairwise": [p.to_json() for p in self.pairwise]}


def judge_models(
    completer: Completer,
    models: Mapping[str, Endpoint],
    judge: Endpoint,
    questions: Sequence[Question],
    *,
    answer_max_tokens: int = ANSWER_MAX_TOKENS,
    judge_max_tokens: int = JUDGE_MAX_TOKENS,
    temperature: float = JUDGE_TEMPERATURE,
) -> JudgeRun:
    """Each model (label: endpoint) answers once; the judge grades every model's answers and compares the first
    model's with each other's in both orders, reusing those answers."""
    answers = {
        label: answer_questions(completer, endpoint, questions, max_tokens=answer_max_tokens)
        for label, endpoint in models.items()
    }
    judged = {"max_tokens": judge_max_tokens, "temperature": temperature}
    single = [
        grade_answers(completer, judge, questions, replies, model=label, **judged) for label, replies in answers.items()
    ]
    baseline, *others = answers
    pairwise = [
        compare_answers(completer, judge, questions, answers[baseline], answers[other], models=(baseline, other),
                        **judged)
        for other in others
    ]  # fmt: skip
    return JudgeRun(single, pairwise)


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


def parse_rating(text: str | None) -> float | None:
    """The last `[[N]]` in a judge's reply, if 1 <= N <= 10 (the rubric asks for it on the last line; an
    explanation may quote the format earlier). Out of range, or no rating: None."""
    matches = RATING.findall(unicodedata.normalize("NFKC", text or ""))
    if not matches:
        return None
    rating = float(matches[-1])
    return rating if 1 <= rating <= 10 else None


def parse_verdict(text: str | None) -> str | None:
    """The last `[[A]]`, `[[B]]` or `[[C]]` in a judge's reply as "A", "B" or "tie"; None if there is none."""
    matches = VERDICT.findall(unicodedata.normalize("NFKC", text or ""))
    return VERDICTS[matches[-1]] if matches else None


def answer_questions(
    completer: Completer, endpoint: Endpoint, questions: Sequence[Question], *, max_tokens: int = ANSWER_MAX_TOKENS
) -> list[Reply]:
    """The model under test answers each question as one user message, greedily (temperature 0), so that a
    rerun gets the same answers (and the runner's cache can serve them)."""
    payloads = [
        {"messages": [{"role": "user", "content": q.question}], "max_tokens": max_tokens, "temperature": 0}
        for q in questions
    ]
    return list(completer.run(endpoint, payloads, description=f"answers of {endpoint.model}"))


def grade_single(
    completer: Completer,
    model: Endpoint,
    judge: Endpoint,
    questions: Sequence[Question],
    *,
    answer_max_tokens: int = ANSWER_MAX_TOKENS,
    judge_max_tokens: int = JUDGE_MAX_TOKENS,
    temperature: float = JUDGE_TEMPERATURE,
) -> SingleGrading:
    """The model answers the questions, then the judge grades each answer 1-10."""
    answers = answer_questions(completer, model, questions, max_tokens=answer_max_tokens)
    return grade_answers(
        completer, judge, questions, answers, model=model.model, max_tokens=judge_max_tokens, temperature=temperature
    )


def grade_answers(
    completer: Completer,
    judge: Endpoint,
    questions: Sequence[Question],
    answers: Sequence[Reply],
    *,
    model: str,
    max_tokens: int = JUDGE_MAX_TOKENS,
    temperature: float = JUDGE_TEMPERATURE,
) -> SingleGrading:
    """The judge grades answers already given (by `model`), one per question, in question order."""
    _check_answers(questions, answers, model)
    templates = [SINGLE_REFERENCE if q.reference else SINGLE for q in questions]
    conversations = [
        template.messages(question=q.question, answer=_text(a), reference=q.reference or "")
        for template, q, a in zip(templates, questions, answers, strict=True)
    ]
    judged = judge_with_retry(
        completer,
        judge,
        conversations,
        parse=parse_rating,
        retry=SINGLE_RETRY,
        max_tokens=max_tokens,
        temperature=temperature,
        description=f"judge: {model}",
    )
    grades = tuple(
        SingleGrade(q.id, q.category, t.name, _text(a), a.finish_reason, j.value, j.texts)
        for q, t, a, j in zip(questions, templates, answers, judged, strict=True)
    )
    return SingleGrading(model, judge.model, temperature, _hashes(SINGLE, SINGLE_REFERENCE), grades)


def grade_pairwise(
    completer: Completer,
    model_a: Endpoint,
    model_b: Endpoint,
    judge: Endpoint,
    questions: Sequence[Question],
    *,
    answer_max_tokens: int = ANSWER_MAX_TOKENS,
    judge_max_tokens: int = JUDGE_MAX_TOKENS,
    temperature: float = JUDGE_TEMPERATURE,
) -> PairwiseGrading:
    """Both models answer the questions, then the judge compares each pair of answers in both orders."""
    answers_a = answer_questions(completer, model_a, questions, max_tokens=answer_max_tokens)
    answers_b = answer_questions(completer, model_b, questions, max_tokens=answer_max_tokens)
    return compare_answers(
        completer,
        judge,
        questions,
        answers_a,
        answers_b,
        models=(model_a.model, model_b.model),
        max_tokens=judge_max_tokens,
        temperature=temperature,
    )


def compare_answers(
    completer: Completer,
    judge: Endpoint,
    questions: Sequence[Question],
    answers_a: Sequence[Reply],
    answers_b: Sequence[Reply],
    *,
    models: tuple[str, str],
    max_tokens: int = JUDGE_MAX_TOKENS,
    temperature: float = JUDGE_TEMPERATURE,
) -> PairwiseGrading:
    """The judge compares answers already given by `models` (A, B): first with A's answer shown first, then
    with B's; all 2n judgements go to the runner as one batch (and one retry batch)."""
    for answers, model in zip((answers_a, answers_b), models, strict=True):
        _check_answers(questions, answers, model)
    templates = [PAIR_REFERENCE if q.reference else PAIR for q in questions]
    conversations = [
        template.messages(
            question=q.question, answer_a=_text(first), answer_b=_text(second), reference=q.reference or ""
        )
        for shown in ((answers_a, answers_b), (answers_b, answers_a))
        for template, q, first, second in zip(templates, questions, *shown, strict=True)
    ]
    judged = judge_with_retry(
        completer,
        judge,
        conversations,
        parse=parse_verdict,
        retry=PAIR_RETRY,
        max_tokens=max_tokens,
        temperature=temperature,
        description="judge: {} vs {}".format(*models),
    )
    a_first, b_first = judged[: len(questions)], judged[len(questions) :]
    grades = tuple(
        _pair_grade(q, t, _text(a), _text(b), ja, jb)
        for q, t, a, b, ja, jb in zip(questions, templates, answers_a, answers_b, a_first, b_first, strict=True)
    )
    return PairwiseGrading(*models, judge.model, temperature, _hashes(PAIR, PAIR_REFERENCE), grades)


def _pair_grade(
    question: Question, template: PromptTemplate, answer_a: str, answer_b: str, a_first: Judged, b_first: Judged
) -> PairGrade:
    """In the B-first order the judge's "A" is model B: swapped back, so both verdicts are in model terms."""
    first = a_first.value
    second = None if b_first.value is None else SWAPPED[b_first.value]
    return PairGrade(
        question.id,
        question.category,
        template.name,
        answer_a,
        answer_b,
        first,
        second,
        combine_orders(first, second),
        a_first.texts,
        b_first.texts,
    )


def combine_orders(a_first: str | None, b_first: str | None) -> str | None:
    """Both orders agree: that verdict. They disagree (position bias decided it): a tie. One failed: None."""
    if a_first is None or b_first is None:
        return None
    return a_first if a_first == b_first else "tie"


def judge_with_retry(
    completer: Completer,
    judge: Endpoint,
    conversations: list[list[dict]],
    *,
    parse: Callable[[str | None], float | str | None],
    retry: str,
    max_tokens: int,
    temperature: float,
    description: str,
) -> list[Judged]:
    """Each conversation to the judge; replies `parse` cannot read are asked again once, as a follow-up turn
    after the judge's own reply, which makes the retry payload differ deterministically from the first."""
    first = completer.run(judge, [_payload(c, max_tokens, temperature) for c in conversations], description)
    if len(first) != len(conversations):
        raise ValueError(f"{description}: {len(first)} judge replies for {len(conversations)} requests")
    texts = [_text(reply) for reply in first]
    failed = [n for n, text in enumerate(texts) if parse(text) is None]
    follow_ups = [
        _payload(
            [*conversations[n], {"role": "assistant", "content": texts[n]}, {"role": "user", "content": retry}],
            max_tokens,
            temperature,
        )
        for n in failed
    ]
    second = completer.run(judge, follow_ups, f"{description} (retry)") if follow_ups else []
    retried = {n: _text(reply) for n, reply in zip(failed, second, strict=True)}
    return [
        Judged(parse(retried[n]), (text, retried[n])) if n in retried else Judged(parse(text), (text,))
        for n, text in enumerate(texts)
    ]


def _payload(messages: list[dict], max_tokens: int, temperature: float) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}


def _text(reply: Reply) -> str:
    return reply.text or ""


def _check_answers(questions: Sequence[Question], answers: Sequence[Reply], model: str) -> None:
    if len(answers) != len(questions):
        raise ValueError(f"{model}: {len(answers)} answers for {len(questions)} questions")


def _hashes(*templates: PromptTemplate) -> dict[str, str]:
    return {template.name: template.sha256 for template in templates}
