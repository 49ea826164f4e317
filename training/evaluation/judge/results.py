"""What a judging run produces: grades and pairwise verdicts with the judge's raw replies and prompt hashes,
turned into the report's item scores and verdicts, and into `judgements.json`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from training.evaluation.report.model import ItemScores, PairwiseVerdicts


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
