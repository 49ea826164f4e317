"""The HTTP side: payloads sent concurrently, retried on 429/5xx/timeouts after Retry-After or a backoff, and
every other refusal an `EndpointError` (`responses.py` reads what the server said)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from tqdm import tqdm

from training.errors import ConfigError
from training.evaluation.runner.cache import AnswerCache, KeyedRequest, keyed_request
from training.evaluation.runner.endpoint import Answer, Endpoint, EndpointError
from training.evaluation.runner.responses import parse_answer, refusal_message, retry_after_seconds, server_message

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class _GaveUp(Exception):
    """Retries of one request are used up; `_fetch_all` turns this into an EndpointError with the run's counts."""

    def __init__(self, url: str, attempts: int, failure: str) -> None:
        super().__init__(failure)
        self.url, self.attempts, self.failure = url, attempts, failure


class Runner:
    """Sends payloads to an endpoint; after each `run`, `sent`, `cache_hits` and `retries` say what it did.

    `sent` counts HTTP requests actually sent (retries included), `cache_hits` payloads answered from the
    cache, `retries` the requests sent again after a retryable failure. They describe the last `run` only.
    """

    def __init__(
        self,
        cache_dir: Path | None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        progress: bool = True,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ConfigError(f"--max-retries must be 0 or more, got {max_retries}")
        if not timeout_s > 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout_s}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.progress = progress
        self.backoff_s, self.max_backoff_s, self.max_retry_after_s = backoff_s, max_backoff_s, max_retry_after_s
        self.sent = self.cache_hits = self.retries = 0  # of the last run
        self.total_sent = self.total_cache_hits = 0  # of every run of this runner: what a command reports
        self._random = random.Random()

    def run(self, endpoint: Endpoint, payloads: list[dict], description: str = "") -> list[Answer]:
        """Answers to `payloads`, in their order: from the cache where there, from the endpoint otherwise."""
        self.sent = self.cache_hits = self.retries = 0
        requests = [keyed_request(endpoint, payload) for payload in payloads]
        with self._open_cache() as cache:
            answers = self._cached_answers(cache, requests)
            self.cache_hits = sum(1 for request in requests if request.key in answers)
            missing = list({r.key: r for r in requests if r.key not in answers}.values())  # each distinct once
            if missing:
                copies = Counter(request.key for request in requests)
                with self._progress_bar(len(requests), self.cache_hits, description or endpoint.model) as bar:
                    try:
                        asyncio.run(
                            self._fetch_all(endpoint, missing, cache, answers, lambda key: bar.update(copies[key]))
                        )
                    finally:
                        self.total_sent += self.sent
        self.total_cache_hits += self.cache_hits
        return [answers[request.key] for request in requests]

    @contextlib.contextmanager
    def _open_cache(self) -> Iterator[AnswerCache | None]:
        cache = None if self.cache_dir is None else AnswerCache(self.cache_dir)
        try:
            yield cache
        finally:
            if cache is not None:
                cache.close()

    @staticmethod
    def _cached_answers(cache: AnswerCache | None, requests: list[KeyedRequest]) -> dict[str, Answer]:
        if cache is None:
            return {}
        found = {request.key: cache.get(request.key) for request in requests}
        return {key: answer for key, answer in found.items() if answer is not None}

    def _progress_bar(self, total: int, done: int, description: str) -> tqdm:
        disable = not self.progress
        return tqdm(total=total, initial=done, desc=description, unit="answer", file=sys.stderr, disable=disable)

    async def _fetch_all(
        self,
        endpoint: Endpoint,
        missing: list[KeyedRequest],
        cache: AnswerCache | None,
        answers: dict[str, Answer],
        advance: Callable[[str], None],
    ) -> None:
        """Fetch concurrently; store each answer the moment it arrives; on the first failure stop the rest."""
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=_headers(endpoint)) as client:
            tasks = [asyncio.create_task(self._fetch_one(client, semaphore, endpoint, r)) for r in missing]
            try:
                for next_answer in asyncio.as_completed(tasks):
                    request, answer = await next_answer
                    answers[request.key] = answer
                    if cache is not None:
                        cache.put(request, endpoint, answer)
                    advance(request.key)
            except _GaveUp as failure:
                raise EndpointError(self._gave_up_message(endpoint, failure, len(answers), cache)) from None
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _gave_up_message(self, endpoint: Endpoint, failure: _GaveUp, kept: int, cache: AnswerCache | None) -> str:
        where = f"{failure.url} (model '{endpoint.model}')"
        if cache is None:
            after = "no --cache-dir, so a rerun asks everything again"
        else:
            after = f"{kept} answers are kept in {cache.path}; a rerun sends only the missing requests"
        return f"{where}: no answer after {failure.attempts} attempts, the last: {failure.failure}; {after}"

    async def _fetch_one(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, endpoint: Endpoint, request: KeyedRequest
    ) -> tuple[KeyedRequest, Answer]:
        async with semaphore:  # held through backoff too: an overloaded server gets no more than `concurrency`
            return request, await self._post_with_retries(client, endpoint, request)

    async def _post_with_retries(self, client: httpx.AsyncClient, endpoint: Endpoint, request: KeyedRequest) -> Answer:
        url = endpoint.base_url + request.path
        for attempt in range(self.max_retries + 1):
            self.sent += 1
            try:
                response = await client.post(url, json=request.body)
            except httpx.TransportError as error:  # connection refused or reset, timeouts
                failure, delay = self._transport_failure(error), self._backoff(attempt)
            else:
                if response.status_code == 200:
                    return parse_answer(response, url, endpoint, chat=request.path == "/chat/completions")
                if response.status_code not in RETRY_STATUSES:
                    raise EndpointError(refusal_message(response, url, endpoint))
                failure = f"HTTP {response.status_code}: {server_message(response)}"
                retry_after = self._retry_after(response)
                delay = self._backoff(attempt) if retry_after is None else retry_after
            if attempt == self.max_retries:
                raise _GaveUp(url, attempt + 1, failure)
            self.retries += 1
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _transport_failure(self, error: httpx.TransportError) -> str:
        if isinstance(error, httpx.TimeoutException):
            return f"{type(error).__name__}: nothing within --timeout {self.timeout_s:g} s"
        return f"{type(error).__name__}: {str(error) or 'no detail'}"

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so that many requests failing together do not return together."""
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + self._random.random() / 2)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """The server's wait (capped), plus a little jitter on top so that it is never shorter than asked."""
        seconds = retry_after_seconds(response.headers.get("retry-after"), time.time())
        if seconds is None:
            return None
        seconds = min(seconds, self.max_retry_after_s)
        return seconds + self._random.uniform(0, 0.1 * seconds)


def _headers(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
