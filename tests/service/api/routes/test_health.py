"""/health, /ready and /metrics (parsed with prometheus-client's own parser)."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import API_KEY, BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process


def scrape(url: str) -> dict[str, list]:
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(r.text)}


def quiet_scrape(url: str) -> dict[str, list]:
    """A scrape taken when no request is in flight on the shared server, so that a counter's difference
    between two scrapes is this test's requests alone (a stream an earlier test left would count too)."""
    deadline = time.monotonic() + 30
    while True:
        families = scrape(url)
        in_flight = sample_value(families.get("tsumugi_requests_in_flight", []), "tsumugi_requests_in_flight")
        if in_flight == 0:
            return families
        assert time.monotonic() < deadline, f"{in_flight} requests still in flight after 30 s"
        time.sleep(0.2)


def sample_value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_and_ready_need_no_auth(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_unknown_route_is_404_envelope_for_a_caller_with_a_key(server):
    r = httpx.get(f"{server.url}/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    # Without a key nothing under /v1 is answered but 401, not even whether a route exists.
    assert httpx.get(f"{server.url}/v1/nothing").status_code == 401


def test_metrics_count_requests_tokens_and_latencies(server, client):
    before = quiet_scrape(server.url)
    client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    client.chat.completions.create(
        model="ada",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    after = scrape(server.url)

    def delta(family: str, name: str, **labels) -> float:
        return sample_value(after.get(family, []), name, **labels) - sample_value(
            before.get(family, []), name, **labels
        )

    assert delta("tsumugi_requests", "tsumugi_requests_total", model=BASE, endpoint="chat", status="200") == 1
    assert delta("tsumugi_requests", "tsumugi_requests_total", model="ada", endpoint="chat", status="200") == 1
    assert delta("tsumugi_completion_tokens", "tsumugi_completion_tokens_total", model="ada") == 5
    assert delta("tsumugi_prompt_tokens", "tsumugi_prompt_tokens_total", model=BASE) > 0
    ttft = "tsumugi_time_to_first_token_seconds"
    assert delta(ttft, f"{ttft}_count", model=BASE) == 1
    itl = "tsumugi_inter_token_latency_seconds"
    assert delta(itl, f"{itl}_count", model="ada") == 4
    e2e = "tsumugi_request_duration_seconds"
    assert delta(e2e, f"{e2e}_count", model="ada") == 1
    assert sample_value(after["tsumugi_requests_in_flight"], "tsumugi_requests_in_flight", model=BASE) == 0
    # vLLM's engine metrics, re-exported under their own names.
    for family in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert family in after, sorted(after)


def test_errors_are_counted_by_status(server, client):
    import openai
    import pytest

    before = quiet_scrape(server.url)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    after = scrape(server.url)
    name = "tsumugi_requests_total"
    assert (
        sample_value(after["tsumugi_requests"], name, status="400")
        - sample_value(before.get("tsumugi_requests", []), name, status="400")
        == 1
    )
