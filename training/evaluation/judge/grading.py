"""Grading: the models answer once, the judge rates each answer (`[[N]]`) and compares pairs in both orders
(`[[A]]`/`[[B]]`/`[[C]]`), asking again once when a reply has no verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from training.evaluation.judge.prompts import (
    PAIR,
    PAIR_REFERENCE,
    PAIR_RETRY,
    SINGLE,
    SINGLE_REFERENCE,
    SINGLE_RETRY,
    PromptTemplate,
)
from training.evaluation.judge.questions import Question
from training.evaluation.judge.results import Judged, JudgeRun, PairGrade, PairwiseGrading, SingleGrade, SingleGrading
from training.evaluation.judge.verdicts import (
    SWAPPED,
    Completer,
    Endpoint,
    Reply,
    _text,
    combine_orders,
    judge_with_retry,
    parse_rating,
    parse_verdict,
)

ANSWER_MAX_TOKENS = 1024
JUDGE_MAX_TOKENS = 1024
JUDGE_TEMPERATURE = 0.0


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


def _check_answers(questions: Sequence[Question], answers: Sequence[Reply], model: str) -> None:
    if len(answers) != len(questions):
        raise ValueError(f"{model}: {len(answers)} answers for {len(questions)} questions")


def _hashes(*templates: PromptTemplate) -> dict[str, str]:
    return {template.name: template.sha256 for template in templates}
