"""Every kustomization renders with the real kubectl kustomize and passes strict schema validation; then the
cross-object checks only an API server or a running cluster would otherwise catch."""

from __future__ import annotations

import copy
import re

import pytest

from tests.deploy import schema
from tests.deploy.tools import (
    CPU_ONLY_COMPONENTS,
    KUSTOMIZATIONS,
    SERVING_OVERLAYS,
    SUPPORTED_KUBERNETES_VERSIONS,
    TRAINER_RUNTIME_WORKLOADS,
    pod_specs,
    pod_templates,
)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The service's routes (service contract): liveness and readiness, the only GET routes a probe may use.
LIVENESS_PATH, READINESS_PATH = "/health", "/ready"
GPU = "nvidia.com/gpu"
# Our images (the serving and training images, as kustomize sets them); others (the endpoint picker) are upstream's.
OUR_IMAGES = "ghcr.io/example/tsumugi"
SHUTDOWN_MARGIN_SECONDS = 5


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def serving_config(docs: list[dict]) -> dict:
    """The generated tsumugi-config ConfigMap (its name carries kustomize's content hash)."""
    (config,) = [cm for cm in by_kind(docs, "ConfigMap") if cm["metadata"]["name"].startswith("tsumugi-config-")]
    return config


def all_containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


# -- rendering and schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_passes_strict_schema_validation(rendered, name, version):
    docs = rendered[name]
    assert docs, f"{name} rendered nothing"
    for doc in docs:
        schema.validate(doc, version)


def test_clusters_older_than_the_supported_range_are_refused(rendered):
    """1.28 has no preStop `sleep` action: strict validation says so instead of the kubelet ignoring it."""
    deployment = one(rendered["overlays/fp16"], "Deployment")
    with pytest.raises(schema.ManifestError, match="sleep"):
        schema.validate(deployment, "1.28.0")


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_serving_overlay_has_every_resource(rendered, overlay):
    kinds = sorted(doc["kind"] for doc in rendered[f"overlays/{overlay}"])
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ScaledObject",
        "ServiceMonitor",
        "PrometheusRule",
        "PersistentVolumeClaim",
        "ServiceAccount",
    ]:
        assert kind in kinds, f"{overlay} lacks a {kind}"


def test_strict_validation_rejects_what_an_api_server_would(rendered):
    """The validators can fail: an unknown field, a removed API version, an unknown kind and an unknown CRD
    field (typed models and fetched CRD schemas alike, a LeaderWorkerSet's pod template too) are each rejected."""
    docs = rendered["overlays/fp16"]
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    removed_api = {**copy.deepcopy(one(docs, "PodDisruptionBudget")), "apiVersion": "policy/v1beta1"}
    unknown_kind = {"apiVersion": "v1", "kind": "Deploymint", "metadata": {"name": "x"}}
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    scaled["spec"]["minReplicaCount"] = "one"
    trainjob = copy.deepcopy(one(rendered["training/multi-gpu"], "TrainJob"))
    trainjob["spec"]["trainer"]["numNode"] = 2
    leader_worker_set = copy.deepcopy(one(rendered["overlays/multi-node"], "LeaderWorkerSet"))
    leader_worker_set["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["portz"] = []
    pool = copy.deepcopy(one(rendered["overlays/inference-pool"], "InferencePool"))
    pool["spec"]["targetPorts"][0]["number"] = "8000"
    bad_docs = [deployment, removed_api, unknown_kind, monitor, scaled, trainjob, leader_worker_set, pool]
    for bad in bad_docs:
        with pytest.raises(schema.ManifestError):
            schema.validate(bad)


# -- what only an API server or a live cluster would catch ------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_names_are_valid(rendered, name):
    for doc in rendered[name]:
        meta_name = doc["metadata"]["name"]
        assert len(meta_name) <= 253 and DNS1123_SUBDOMAIN.match(meta_name), meta_name
        if doc["kind"] in {"Service", "Namespace"}:
            assert len(meta_name) <= 63 and DNS1123_LABEL.match(meta_name), meta_name
        for key, value in doc["metadata"].get("labels", {}).items():
            assert len(value) <= 63 and re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value), (
                key,
                value,
            )
        for pod in pod_specs(doc):
            for container in all_containers(pod):
                assert len(container["name"]) <= 63 and DNS1123_LABEL.match(container["name"])
                for port in container.get("ports", []):
                    assert len(port["name"]) <= 15 and PORT_NAME.match(port["name"]), port["name"]


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_selectors_match_labels(rendered, overlay):
    docs = rendered[f"overlays/{overlay}"]
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert matches(service["spec"]["selector"], labels)
    assert matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert matches(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    monitor = one(docs, "ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= service_ports
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_ports_and_probes_point_at_real_routes(rendered, overlay):
    """Probes use the service's real routes on the port the service listens on (TSUMUGI_PORT)."""
    docs = rendered[f"overlays/{overlay}"]
    config = serving_config(docs)["data"]
    (server,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports["http"] == int(config["TSUMUGI_PORT"])
    expected_paths = {
        "startupProbe": LIVENESS_PATH,
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
    }
    for probe_name, path in expected_paths.items():
        probe = server[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert ports.get(probe["port"], probe["port"]) == int(config["TSUMUGI_PORT"]), probe_name
    for port in one(docs, "Service")["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    for rule in one(docs, "NetworkPolicy")["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in ports or port["port"] in ports.values()


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_startup_probe_allows_a_multi_minute_model_load(rendered, overlay):
    (server,) = one(rendered[f"overlays/{overlay}"], "Deployment")["spec"]["template"]["spec"]["containers"]
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10 * 60


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_grace_period_covers_prestop_and_drain(rendered, overlay):
    """SIGTERM comes after preStop; the service then drains for up to TSUMUGI_DRAIN_TIMEOUT seconds. The
    kubelet's SIGKILL at terminationGracePeriodSeconds must come after both, with a margin."""
    docs = rendered[f"overlays/{overlay}"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    prestop_seconds = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_seconds = int(serving_config(docs)["data"]["TSUMUGI_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= prestop_seconds + drain_seconds + SHUTDOWN_MARGIN_SECONDS


def gpu_pod_specs(docs: list[dict]) -> list[dict]:
    """The pod specs of every workload except the CPU-only components'."""
    return [
        template["spec"]
        for doc in docs
        for template in pod_templates(doc)
        if template["metadata"]["labels"]["app.kubernetes.io/component"] not in CPU_ONLY_COMPONENTS
    ]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS.keys() - TRAINER_RUNTIME_WORKLOADS))
def test_gpu_request_equals_limit_and_gpu_nodes_are_targeted(rendered, name):
    workloads = [doc for doc in rendered[name] if pod_specs(doc)]
    assert workloads
    for pod in gpu_pod_specs(workloads):
        gpu_containers = [c for c in pod["containers"] if GPU in c["resources"].get("limits", {})]
        assert gpu_containers, f"a pod of {name} requests no GPU: {[c['name'] for c in pod['containers']]}"
        for container in gpu_containers:
            resources = container["resources"]
            assert resources["requests"][GPU] == resources["limits"][GPU], container["name"]
            assert int(resources["limits"][GPU]) >= 1
        assert pod["nodeSelector"].get("nvidia.com/gpu.present") == "true"
        assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert any(
            m["mountPath"] == "/dev/shm" and m["name"] in {v["name"] for v in shm}
            for c in pod["containers"]
            for m in c["volumeMounts"]
        )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_containers_are_locked_down(rendered, name):
    """Non-root, read-only root filesystem with only the cache dirs writable, no privilege escalation,
    no capabilities, RuntimeDefault seccomp: Pod Security 'restricted', which the namespace enforces."""
    for doc in rendered[name]:
        for pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert pod.get("automountServiceAccountToken") is False
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in all_containers(pod):
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"]["drop"] == ["ALL"]
                assert "add" not in context["capabilities"]
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                writable = {"/tmp", "/var/cache/tsumugi"} if container["image"].startswith(OUR_IMAGES) else {"/tmp"}
                assert writable <= set(mounts), container["name"]
                assert all(m["name"] in volumes for m in mounts.values())


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_config_and_secret_references_resolve(rendered, overlay):
    docs = rendered[f"overlays/{overlay}"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    configmaps = {cm["metadata"]["name"] for cm in by_kind(docs, "ConfigMap")}
    claims = {pvc["metadata"]["name"] for pvc in by_kind(docs, "PersistentVolumeClaim")}
    for container in all_containers(pod):
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in configmaps
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    (server,) = pod["containers"]
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in server["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    # API keys come from a Secret the operator creates (deploy/README.md); never from the ConfigMap.
    assert secret_refs["TSUMUGI_API_KEYS"] == {"name": "tsumugi-api-keys", "key": "api-keys"}
    assert not any("KEY" in key or "TOKEN" in key for key in serving_config(docs)["data"])
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_model_and_adapters_live_on_the_model_cache_volume(rendered, overlay):
    docs = rendered[f"overlays/{overlay}"]
    config = serving_config(docs)["data"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    cache_mount = next(m for m in server["volumeMounts"] if m["name"] == "model-cache")
    assert cache_mount["readOnly"] is True
    assert config["TSUMUGI_MODEL"].startswith(cache_mount["mountPath"] + "/")
    for module in filter(None, config.get("TSUMUGI_LORA_MODULES", "").split(",")):
        adapter_name, adapter_path = module.split("=", 1)
        assert DNS1123_LABEL.match(adapter_name) and adapter_path.startswith(cache_mount["mountPath"] + "/")
    (fetch,) = pod["initContainers"]
    assert any(m["name"] == "model-cache" and not m.get("readOnly") for m in fetch["volumeMounts"])


def test_lora_overlay_serves_the_adapter_the_training_job_writes(rendered):
    config = serving_config(rendered["overlays/lora"])["data"]
    served = dict(module.split("=", 1) for module in config["TSUMUGI_LORA_MODULES"].split(","))
    (job,) = by_kind(rendered["training/qlora"], "Job")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    out = next(arg.split("=", 1)[1] for arg in trainer["args"] if arg.startswith("--out="))
    base = next(arg.split("=", 1)[1] for arg in trainer["args"] if arg.startswith("--base="))
    assert out in served.values()
    assert base == config["TSUMUGI_MODEL"], "the adapter must be served on the base it was trained on"
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in {pvc["metadata"]["name"] for pvc in by_kind(rendered["overlays/lora"], "PersistentVolumeClaim")}


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_memory_is_guaranteed_and_covers_shared_memory(rendered, overlay):
    """Requests equal limits (Guaranteed QoS: GPU pods are evicted last) and the memory-backed /dev/shm,
    which counts against the container's memory limit, fits well inside it."""
    pod = one(rendered[f"overlays/{overlay}"], "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    requests, limits = server["resources"]["requests"], server["resources"]["limits"]
    assert requests["memory"] == limits["memory"] and requests["cpu"] == limits["cpu"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
    assert _gibibytes(shm) * 4 <= _gibibytes(limits["memory"])


def _gibibytes(quantity: str) -> float:
    units = {"Gi": 1, "Mi": 1 / 1024, "Ti": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_lora_overlay_opens_the_admin_api_from_an_optional_secret(rendered):
    """Runtime adapters load from where the training Job writes them; the admin keys come from their own
    Secret (separate from user keys), optional so that without it the admin API stays closed."""
    docs = rendered["overlays/lora"]
    config = serving_config(docs)["data"]
    (server,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    served = dict(module.split("=", 1) for module in config["TSUMUGI_LORA_MODULES"].split(","))
    assert all(path.startswith(config["TSUMUGI_ADAPTER_DIR"] + "/") for path in served.values())
    admin = next(e for e in server["env"] if e["name"] == "TSUMUGI_ADMIN_API_KEYS")["valueFrom"]["secretKeyRef"]
    user = next(e for e in server["env"] if e["name"] == "TSUMUGI_API_KEYS")["valueFrom"]["secretKeyRef"]
    assert admin["optional"] is True and admin["name"] != user["name"]
    for overlay in ("fp16", "awq"):  # the other overlays keep the admin API closed
        (other,) = one(rendered[f"overlays/{overlay}"], "Deployment")["spec"]["template"]["spec"]["containers"]
        assert "TSUMUGI_ADMIN_API_KEYS" not in {e["name"] for e in other["env"]}


def test_evaluation_job_asks_what_the_lora_overlay_serves(rendered):
    """The evaluation Job compares names the lora overlay serves, over the in-cluster Service, and its
    NetworkPolicy lets it reach exactly the server pods' API port (and DNS)."""
    config = serving_config(rendered["overlays/lora"])["data"]
    served = {config["TSUMUGI_SERVED_MODEL_NAME"]} | {
        module.split("=", 1)[0] for module in config["TSUMUGI_LORA_MODULES"].split(",")
    }
    (job,) = by_kind(rendered["training/evaluation"], "Job")
    (evaluator,) = job["spec"]["template"]["spec"]["containers"]
    args = evaluator["args"]
    assert args[:2] == ["eval", "run"]
    models = {arg.split("=", 1)[1] for arg in args if arg.startswith("--model=")}
    assert len(models) == 2 and models <= served
    (service,) = by_kind(rendered["overlays/lora"], "Service")
    port = service["spec"]["ports"][0]["port"]
    assert f"--base-url=http://{service['metadata']['name']}:{port}/v1" in args
    assert "nvidia.com/gpu" not in evaluator["resources"]["limits"]  # the GPUs are the served model's
    (policy,) = by_kind(rendered["training/evaluation"], "NetworkPolicy")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    server_pods = one(rendered["overlays/lora"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    (api_rule,) = [rule for rule in policy["spec"]["egress"] if "podSelector" in rule["to"][0]]
    assert api_rule["to"][0]["podSelector"]["matchLabels"].items() <= server_pods.items()
    assert api_rule["ports"] == [{"port": port, "protocol": "TCP"}]
