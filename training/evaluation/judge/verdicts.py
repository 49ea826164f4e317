"""Asking the judge and reading its verdict: the last `[[N]]` or `[[A]]`/`[[B]]`/`[[C]]` of a reply, one retry
as a follow-up turn when there is none, and the two orders of a pair combined. The protocols say what the
judge needs of the runner, so this package does not import it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Protocol

from training.evaluation.judge.results import Judged

# Ratings as FastChat parses them, integer or decimal; 1 <= N <= 10 is checked after. NFKC first, so that
# full-width ［［８］］, which Japanese judges write, reads as [[8]].
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
VERDICTS = {"A": "A", "B": "B", "C": "tie"}
SWAPPED = {"A": "B", "B": "A", "tie": "tie"}


class Endpoint(Protocol):
    """What the judge needs of `training.evaluation.runner.endpoint.Endpoint`: its model name, for the records."""

    @property
    def model(self) -> str: ...


class Reply(Protocol):
    """What the judge needs of `training.evaluation.runner.endpoint.Answer`."""

    @property
    def text(self) -> str: ...

    @property
    def finish_reason(self) -> str | None: ...


class Completer(Protocol):
    """`training.evaluation.runner.client.Runner`: one reply per payload (an OpenAI request body without `model`)."""

    def run(self, endpoint: Endpoint, payloads: list[dict], description: str = "") -> Sequence[Reply]: ...


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
