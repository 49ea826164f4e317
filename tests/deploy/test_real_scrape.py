"""A real scrape: the service on the tiny model, a real Prometheus server (Debian's 2.42) configured from
deploy/prometheus/, both on loopback. Queries through Prometheus' HTTP API must find our series and vLLM's
under exactly the names the alert rules, dashboard and autoscaler use (vllm:x, not an escaped vllm_x), and
the alert rules must evaluate cleanly against them."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.tools import ALERT_RULES, DEPLOY, SERVE_PYTHON, tool
from tsumugi.launcher import ServerProcess, free_port, service_process

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SERVED_NAME = "tiny"
API_KEY = "scrape-test-key"
SERVICE_READY_TIMEOUT = 240
SCRAPE_TIMEOUT = 60
# Series that only exist on Kubernetes (kube-state-metrics) and so cannot appear in a loopback scrape.
CLUSTER_ONLY = {"kube_pod_container_status_restarts_total"}


def http(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, text) of a GET, or a POST with a JSON body; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, {}, ""


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory):
    """The service as the image runs it (python -m service), with an API key, on a free loopback port."""
    args = ["--model", str(tiny_model), "--served-model-name", SERVED_NAME, "--api-key", API_KEY]
    args += ["--max-model-len", "512", "--enforce-eager"]
    inherited_settings = {key: None for key in os.environ if key.startswith("TSUMUGI_")}
    log = tmp_path_factory.mktemp("service") / "service.log"
    server = service_process(
        args, log, python=SERVE_PYTHON, env=inherited_settings, ready_timeout=SERVICE_READY_TIMEOUT, stop_grace=45
    ).start()
    yield server.url
    server.stop_in_background()


@pytest.fixture(scope="module")
def traffic(service) -> dict[str, int]:
    """One successful chat and completion request, and one that fails, so every labelled series exists."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    completion = {"model": SERVED_NAME, "prompt": "hello", "max_tokens": 8}
    return {
        "chat": http(f"{service}/v1/chat/completions", chat, auth)[0],
        "completions": http(f"{service}/v1/completions", completion, auth)[0],
        "unknown model": http(f"{service}/v1/completions", {**completion, "model": "no-such-model"}, auth)[0],
    }


@pytest.fixture(scope="module")
def prometheus(service, traffic, tmp_path_factory):
    """Prometheus from deploy/prometheus/prometheus.yml, aimed at the loopback service, scraping each second."""
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(ALERT_RULES)]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "tsumugi"]
    job["static_configs"] = [{"targets": [urllib.parse.urlparse(service).netloc]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = ServerProcess(
        [
            tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
        port=port,
        ready_path="/-/ready",
        name="prometheus",
        ready_timeout=30,
        stop_grace=45,
    )
    with server:
        # Prometheus 2.42 waits a few seconds before its first scrape; wait for our request counter.
        server.wait_until(
            lambda: bool(query(server.url, 'tsumugi_requests_total{job="tsumugi", status="200"}')),
            SCRAPE_TIMEOUT,
            "scraping our traffic",
        )
        yield server.url


def query(prometheus_url: str, expr: str) -> list[dict]:
    status, _, body = http(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_traffic_was_served(traffic):
    assert traffic["chat"] == 200 and traffic["completions"] == 200
    assert traffic["unknown model"] is not None and traffic["unknown model"] >= 400


def test_probe_paths_of_the_deployment_answer(service, rendered):
    """The paths the startup/liveness/readiness probes use are real routes, open without an API key."""
    (deployment,) = [doc for doc in rendered["overlays/fp16"] if doc["kind"] == "Deployment"]
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = server[probe]["httpGet"]["path"]
        assert http(f"{service}{path}")[0] == 200, f"{probe} {path}"
    assert http(f"{service}/no-such-route")[0] == 404


def test_metrics_are_served_in_the_classic_text_format(service):
    """Even when a scraper asks for OpenMetrics: that is what keeps `vllm:` names unescaped."""
    accept = {"Accept": "application/openmetrics-text;version=1.0.0;escaping=underscores,text/plain;q=0.5"}
    status, headers, body = http(f"{service}/metrics", headers=accept)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "vllm:num_requests_waiting{" in body


def test_prometheus_stores_every_name_the_rules_dashboard_and_autoscaler_use(prometheus):
    names = promql.stored_metric_names(promql.all_expressions()) - CLUSTER_ONLY
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "tsumugi_requests_total"} <= names
    missing = [name for name in sorted(names) if not query(prometheus, f'{{__name__="{name}", job="tsumugi"}}')]
    assert not missing, f"queried but not stored by Prometheus: {missing}"


def test_no_escaped_twins_are_stored(prometheus):
    _, _, body = http(f"{prometheus}/api/v1/label/__name__/values")
    stored = json.loads(body)["data"]
    assert any(name.startswith("vllm:") for name in stored)
    assert not [name for name in stored if name.startswith("vllm_")], "vllm: names were escaped"


def test_series_carry_the_labels_the_queries_group_by(prometheus):
    ours = query(prometheus, 'sum by (model, endpoint, status) (tsumugi_requests_total{job="tsumugi"})')
    labels = {(r["metric"]["model"], r["metric"]["endpoint"], r["metric"]["status"]) for r in ours}
    assert (SERVED_NAME, "chat", "200") in labels and (SERVED_NAME, "completions", "200") in labels
    engine = query(prometheus, 'vllm:num_requests_waiting{job="tsumugi"}')
    assert engine and engine[0]["metric"]["model_name"] == SERVED_NAME
    ttft = query(
        prometheus,
        'histogram_quantile(0.95, sum by (le) (tsumugi_time_to_first_token_seconds_bucket{job="tsumugi"}))',
    )
    assert ttft and float(ttft[0]["value"][1]) > 0


def test_alert_rules_evaluate_cleanly_and_stay_quiet(prometheus):
    """The rules from deploy/ load into the real server and evaluate without errors on real series; on a
    healthy service none of them fires (TsumugiEngineDown in particular must see the engine's series)."""
    time.sleep(3)  # a few 1 s evaluation rounds after the first scrape
    _, _, body = http(f"{prometheus}/api/v1/rules")
    rules = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == set(promql.alert_expressions())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        assert rule["state"] == "inactive", f"{rule['name']} is {rule['state']} on a healthy service"
    assert query(prometheus, 'up{job="tsumugi"} == 1')
