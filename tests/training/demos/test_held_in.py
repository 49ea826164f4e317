"""The demos' evaluation pool: every (model, question) pair asked at once, answers split back per model."""

from __future__ import annotations

import random
import threading
import time

from training.demos.held_in import PARALLEL_REQUESTS, asked_of_each


def test_each_model_gets_its_own_answers_in_the_questions_order_from_one_pool():
    in_flight, most_in_flight, lock = 0, 0, threading.Lock()

    def ask(model: str, item: int) -> str:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        time.sleep(0.05 + random.Random(item).random() / 20)  # answers finish out of order
        with lock:
            in_flight -= 1
        return f"{model}:{item}"

    items = list(range(PARALLEL_REQUESTS // 2))  # fewer than the pool: only shared does it fill
    answers = asked_of_each(ask, ["base", "ja", "tools"], items)
    assert answers == [[f"{model}:{item}" for item in items] for model in ("base", "ja", "tools")]
    assert most_in_flight == PARALLEL_REQUESTS  # the models share the pool rather than taking turns
