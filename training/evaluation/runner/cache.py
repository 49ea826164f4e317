"""Answers kept on disk, keyed by the sha256 of (base URL, model, request body): a killed run keeps what it got,
and a rerun sends only what is missing. Errors are never cached, and the key is neither in the cache key nor
stored."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from training.errors import ConfigError
from training.evaluation.runner.endpoint import Answer, Endpoint

CACHE_FILE = "answers.sqlite3"


@dataclass(frozen=True)
class KeyedRequest:
    key: str
    path: str
    body: dict  # the payload plus `model`: exactly what is sent and what the key is made of


def cache_key(endpoint: Endpoint, body: Mapping) -> str:
    """sha256 of canonical JSON of (base URL, model, full body): any change to what is asked is a new key."""
    material = {"base_url": endpoint.base_url, "model": endpoint.model, "request": body}
    return hashlib.sha256(_canonical(material)).hexdigest()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def keyed_request(endpoint: Endpoint, payload: Mapping) -> KeyedRequest:
    """The body to send for one payload, and where: a payload is a request body without `model`."""
    if not isinstance(payload, Mapping) or ("prompt" in payload) == ("messages" in payload):
        raise ValueError(f"a payload needs exactly one of 'prompt' (completions) or 'messages' (chat), got {payload!r}")
    if "model" in payload:
        raise ValueError("a payload must not name the model; the endpoint does")
    body = {**payload, "model": endpoint.model}
    path = "/completions" if "prompt" in payload else "/chat/completions"
    return KeyedRequest(key=cache_key(endpoint, body), path=path, body=body)


class AnswerCache:
    """Answers on disk, one sqlite row per key, committed one by one so a killed run loses nothing it got.

    Used from one thread (the event loop's, which is the caller's), so there is a single writer."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers "
                "(key TEXT PRIMARY KEY, request TEXT NOT NULL, answer TEXT NOT NULL, created REAL NOT NULL)"
            )
            self._db.commit()
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"--cache-dir: cannot use {self.path} as the answer cache: {error}") from error

    def get(self, key: str) -> Answer | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        stored = json.loads(row[0])
        return Answer(text=stored["text"], finish_reason=stored["finish_reason"], cached=True, usage=stored["usage"])

    def put(self, request: KeyedRequest, endpoint: Endpoint, answer: Answer) -> None:
        stored = {"text": answer.text, "finish_reason": answer.finish_reason, "usage": answer.usage}
        request_json = {"base_url": endpoint.base_url, "path": request.path, "body": request.body}
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, request, answer, created) VALUES (?, ?, ?, ?)",
            (request.key, _canonical(request_json).decode(), json.dumps(stored, ensure_ascii=False), time.time()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
