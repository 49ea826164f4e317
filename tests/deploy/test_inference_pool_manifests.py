"""The inference-pool overlay holds together: the InferencePool selects the server pods on the port they serve,
its endpoint picker is the EPP this overlay runs (Service, port, flags, RBAC), the HTTPRoute and the llm-d
resources name the pool, the adapter rollout splits between adapters the pods serve and training writes, and
the NetworkPolicies let the gateway and the EPP reach what they must (and nothing else reach the EPP).
Schema validation of every object is in test_manifests.py."""

from __future__ import annotations

import copy

import pytest

from tests.deploy.network_policy import Pod, connects
from tests.deploy.test_manifests import by_kind, one, serving_config

OVERLAY = "overlays/inference-pool"
NAMESPACE = "tsumugi"
SERVICE_ACCOUNT_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def docs(rendered) -> list[dict]:
    return rendered[OVERLAY]


def deployment(docs: list[dict], component: str) -> dict:
    (found,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def flag(args: list[str], name: str) -> str:
    """The value of `--name value` or `--name=value` in a container's args."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def pod_of(workload: dict) -> Pod:
    template = workload["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    return Pod(workload["metadata"]["namespace"], template["metadata"]["labels"], ports)


def check_pool_selects_the_server_pods(docs: list[dict]) -> None:
    pool = one(docs, "InferencePool")["spec"]
    server, epp = deployment(docs, "server"), deployment(docs, "endpoint-picker")
    selector = pool["selector"]["matchLabels"]
    assert selector.items() <= server["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= epp["spec"]["template"]["metadata"]["labels"].items()
    (target,) = pool["targetPorts"]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert target["number"] == {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert target["number"] == int(serving_config(docs)["data"]["TSUMUGI_PORT"])


def test_the_pool_selects_the_server_pods_on_their_api_port(docs):
    check_pool_selects_the_server_pods(docs)


def check_endpoint_picker_is_the_epp_here(docs: list[dict]) -> None:
    pool = one(docs, "InferencePool")
    ref = pool["spec"]["endpointPickerRef"]
    assert ref.get("kind", "Service") == "Service" and ref.get("group", "") == ""
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == ref["name"]]
    epp = deployment(docs, "endpoint-picker")
    assert service["spec"]["selector"].items() <= epp["spec"]["template"]["metadata"]["labels"].items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports.get(port["targetPort"], port["targetPort"]) == 9002, "the EPP's ext-proc gRPC port"
    assert port["appProtocol"] == "kubernetes.io/h2c"
    args = container["args"]
    assert flag(args, "--pool-name") == pool["metadata"]["name"]
    assert flag(args, "--pool-namespace") == pool["metadata"]["namespace"]
    assert flag(args, "--pool-group") == pool["apiVersion"].split("/")[0]
    health = int(flag(args, "--grpc-health-port"))
    assert container_ports["grpc-health"] == health
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == health
    config_dir, config_file = flag(args, "--config-file").rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_dir]
    (volume,) = [v for v in epp["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    (config,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    assert config_file in config["data"]


def test_the_endpoint_picker_ref_names_the_epp_service_port_and_pool(docs):
    check_endpoint_picker_is_the_epp_here(docs)


def test_the_epp_reads_the_api_with_a_read_only_role_and_an_explicit_token(docs):
    """The RoleBinding's subject is the EPP's ServiceAccount; the Role lets it get/list/watch pods and every
    llm-d and pool kind this overlay creates, nothing more; the token is the projected one at client-go's path."""
    epp = deployment(docs, "endpoint-picker")["spec"]["template"]["spec"]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": epp["serviceAccountName"], "namespace": NAMESPACE}
    ]
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == binding["roleRef"]["name"]]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in role["rules"])
    watched = {("", "pods")} | {
        (d["apiVersion"].split("/")[0], d["kind"].lower() + "s")
        for d in docs
        if d["kind"] in {"InferencePool", "InferenceObjective", "InferenceModelRewrite"}
    }
    assert watched <= granted
    assert not any("*" in g or "*" in r for g, r in granted)
    (container,) = epp["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SERVICE_ACCOUNT_TOKEN_DIR]
    (volume,) = [v for v in epp["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    assert {"token", "ca.crt", "namespace"} == {
        s.get("serviceAccountToken", {}).get("path")
        or next(iter(s.get("configMap", s.get("downwardAPI", {})).get("items", [])), {}).get("path")
        for s in sources
    }


def test_the_route_sends_the_openai_api_to_the_pool(docs):
    pool = one(docs, "InferencePool")
    (rule,) = one(docs, "HTTPRoute")["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": pool["apiVersion"].split("/")[0], "kind": "InferencePool", "name": pool["metadata"]["name"]}
    ]
    assert [m["path"] for m in rule["matches"]] == [{"type": "PathPrefix", "value": "/v1"}]


def test_objectives_and_the_rewrite_name_the_pool(docs):
    pool = one(docs, "InferencePool")
    expected = {"group": pool["apiVersion"].split("/")[0], "kind": "InferencePool", "name": pool["metadata"]["name"]}
    for doc in by_kind(docs, "InferenceObjective") + by_kind(docs, "InferenceModelRewrite"):
        assert doc["spec"]["poolRef"] == expected, doc["metadata"]["name"]
    priorities = sorted(doc["spec"]["priority"] for doc in by_kind(docs, "InferenceObjective"))
    assert priorities[0] < 0 < priorities[-1], "one objective above the default priority 0, one below"


def training_outputs(rendered) -> set[str]:
    """The adapter directories the training kustomizations write (--out of the QLoRA Job and of the TrainJob)."""
    (job,) = by_kind(rendered["training/qlora"], "Job")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    trainjob = one(rendered["training/multi-gpu"], "TrainJob")
    return {flag(trainer["args"], "--out"), flag(trainjob["spec"]["trainer"]["args"], "--out")}


def check_rewrite_targets(docs: list[dict], rendered) -> None:
    config = serving_config(docs)["data"]
    served = dict(module.split("=", 1) for module in config["TSUMUGI_LORA_MODULES"].split(","))
    lora_served = dict(
        module.split("=", 1)
        for module in serving_config(rendered["overlays/lora"])["data"]["TSUMUGI_LORA_MODULES"].split(",")
    )
    (rewrite,) = by_kind(docs, "InferenceModelRewrite")
    (rule,) = rewrite["spec"]["rules"]
    targets = {t["modelRewrite"]: t["weight"] for t in rule["targets"]}
    assert len(targets) == 2 and targets.keys() <= served.keys(), (targets, served)
    assert lora_served.items() <= served.items(), "the lora overlay's adapters stay served, at the same paths"
    assert {served[name] for name in targets} <= training_outputs(rendered)
    stable, candidate = sorted(targets, key=targets.get, reverse=True)
    assert stable in lora_served and targets[candidate] * 9 == targets[stable], "a 90/10 rollout from the lora adapter"
    (match,) = rule["matches"]
    assert match["model"]["value"] not in served, "clients ask for the stable alias, not an adapter"


def test_the_rewrite_splits_between_adapters_the_pods_serve_and_training_writes(docs, rendered):
    check_rewrite_targets(docs, rendered)


def check_network_paths(docs: list[dict]) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    server, epp = pod_of(deployment(docs, "server")), pod_of(deployment(docs, "endpoint-picker"))
    target_port = one(docs, "InferencePool")["spec"]["targetPorts"][0]["number"]
    gateway_name = one(docs, "HTTPRoute")["spec"]["parentRefs"][0]["name"]
    gateway = Pod(NAMESPACE, {"gateway.networking.k8s.io/gateway-name": gateway_name})
    stranger = Pod(NAMESPACE, {"app": "something-else"})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert connects(policies, epp, server, target_port), "the EPP scrapes the pods' /metrics"
    assert connects(policies, gateway, server, target_port), "the gateway forwards to the picked pod"
    assert connects(policies, gateway, epp, epp.ports["grpc"]), "the gateway asks the EPP"
    assert connects(policies, prometheus, epp, epp.ports["metrics"]), "Prometheus scrapes the EPP"
    assert not connects(policies, stranger, epp, epp.ports["grpc"]), "only the gateway talks ext-proc"
    assert not connects(policies, epp, stranger, 8080), "the EPP reaches only the pool, DNS and the API server"


def test_network_policies_let_the_gateway_and_the_epp_through_and_no_one_else(docs):
    check_network_paths(docs)


# -- the checks above can fail --------------------------------------------------------------------------------


def broken(docs: list[dict], kind: str, edit) -> list[dict]:
    """A copy of the rendered documents with `edit` applied to the one object of `kind`."""
    copied = copy.deepcopy(docs)
    edit(one(copied, kind))
    return copied


def test_the_cross_reference_checks_fail_on_broken_manifests(docs, rendered):
    def wrong_selector(pool):
        pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "serverr"

    def wrong_port(pool):
        pool["spec"]["targetPorts"][0]["number"] = 8080

    def wrong_picker(pool):
        pool["spec"]["endpointPickerRef"]["port"]["number"] = 9090

    def wrong_target(rewrite):
        rewrite["spec"]["rules"][0]["targets"][1]["modelRewrite"] = "ja-alpaca-v3"

    def gateway_selector_with_our_labels(policy):
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "tsumugi"

    def epp_policy(docs):
        return [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tsumugi-epp"]

    cases = [
        (check_pool_selects_the_server_pods, broken(docs, "InferencePool", wrong_selector)),
        (check_pool_selects_the_server_pods, broken(docs, "InferencePool", wrong_port)),
        (check_endpoint_picker_is_the_epp_here, broken(docs, "InferencePool", wrong_picker)),
        (lambda d: check_rewrite_targets(d, rendered), broken(docs, "InferenceModelRewrite", wrong_target)),
    ]
    bad_policy = copy.deepcopy(docs)
    gateway_selector_with_our_labels(epp_policy(bad_policy)[0])
    cases.append((check_network_paths, bad_policy))
    for check, bad in cases:
        with pytest.raises(AssertionError):
            check(bad)
