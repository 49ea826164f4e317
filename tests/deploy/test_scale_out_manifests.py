"""The multi-node overlay, the multi-node TrainJob and the autoscaler's floor hold together: leader and workers of
a LeaderWorkerSet group agree on one parallel layout that fits the group's GPUs, with flags both CLIs have and
sizing the planner gives; the TrainJob states its layout once, where the torch-distributed runtime turns it into
torchrun's environment; and no ScaledObject may scale to a zero it cannot wake from.
Schema validation of every object is in test_manifests.py."""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys

import pytest
import yaml

from tests.deploy.schema import pod_template_as_deployment
from tests.deploy.test_checkov import EXPECTED_SKIPS, checkov, failures_and_skips
from tests.deploy.test_inference_pool_manifests import flag
from tests.deploy.test_manifests import GPU, by_kind, one, serving_config
from tests.deploy.tools import DEPLOY, KUSTOMIZATIONS, ROOT, SERVE_PYTHON, run

OVERLAY = "overlays/multi-node"
LAYOUT_FLAGS = ["--tensor-parallel-size", "--pipeline-parallel-size", "--nnodes", "--master-port"]
VLLM = SERVE_PYTHON.parents[1] / "lib" / "python3.11" / "site-packages" / "vllm"
TORCH_DISTRIBUTED_RUNTIME = DEPLOY / "crds" / "kubeflow-trainer" / "torch_distributed.yaml"
# torchrun flags the torch-distributed runtime sets through PET_* variables; passing them would override it.
TORCHRUN_LAYOUT_FLAGS = re.compile(r"^--(nnodes|nproc[-_]per[-_]node|node[-_]rank|master[-_]addr|master[-_]port|rdzv)")
# Series only running tsumugi pods export: a trigger on them reads nothing when there are no pods.
POD_SERIES = re.compile(r"\b(vllm:[a-z_:]+|tsumugi_[a-z_]+)")


def containers(lws: dict, role: str) -> dict:
    (container,) = lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"]
    return container


def check_parallel_layout(docs: list[dict]) -> None:
    lws = one(docs, "LeaderWorkerSet")
    leader, worker = containers(lws, "leaderTemplate"), containers(lws, "workerTemplate")
    for name in LAYOUT_FLAGS:
        assert flag(leader["args"], name) == flag(worker["args"], name), name
    config = serving_config(docs)["data"]
    tp, pp = int(flag(leader["args"], "--tensor-parallel-size")), int(flag(leader["args"], "--pipeline-parallel-size"))
    nnodes = int(flag(leader["args"], "--nnodes"))
    assert tp == int(config["TSUMUGI_TENSOR_PARALLEL_SIZE"])
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == nnodes, "one pod per node: size = nnodes"
    gpus = {int(c["resources"]["limits"][GPU]) for c in (leader, worker)}
    assert len(gpus) == 1 and tp * pp == nnodes * gpus.pop(), "every rank has a GPU and every GPU a rank"
    assert flag(leader["args"], "--node-rank") == "0" and flag(worker["args"], "--node-rank") == "$(LWS_WORKER_INDEX)"
    for args in (leader["args"], worker["args"]):
        assert flag(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    ports = {p["containerPort"] for p in leader["ports"]}
    assert int(flag(leader["args"], "--master-port")) in ports, "the leader hosts torch.distributed's store"


def test_leader_and_worker_agree_on_one_layout_that_fills_the_group(rendered):
    check_parallel_layout(rendered[OVERLAY])


def test_the_worker_runs_the_leaders_engine_headless(rendered):
    """The worker's engine settings are the leader's ConfigMap values ($(VAR) from the same envFrom), each flag
    exists in vLLM 0.32's CLI, and the leader's exist in `python -m service`."""
    docs = rendered[OVERLAY]
    lws = one(docs, "LeaderWorkerSet")
    leader, worker = containers(lws, "leaderTemplate"), containers(lws, "workerTemplate")
    config = serving_config(docs)
    assert worker["command"] == ["vllm", "serve"] and worker["args"][0] == "$(TSUMUGI_MODEL)"
    assert "--headless" in worker["args"]
    for container in (leader, worker):
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    lws_env = {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE"}
    for reference in re.findall(r"\$\((\w+)\)", " ".join(worker["args"] + leader["args"])):
        assert reference in config["data"] or reference in lws_env, reference
    vllm_cli = (VLLM / "engine" / "arg_utils.py").read_text() + (
        VLLM / "entrypoints" / "launchers" / "cli_args.py"
    ).read_text()
    for arg in worker["args"][1:]:
        assert f'"{arg.split("=")[0]}"' in vllm_cli, f"vllm serve has no {arg}"
    service_help = run([str(SERVE_PYTHON), "-m", "service", "--help"], timeout=120, cwd=ROOT)
    assert service_help.returncode == 0, service_help.stderr
    for arg in leader["args"]:
        assert f"{arg.split('=')[0]} " in service_help.stdout, f"python -m service has no {arg}"


def test_the_api_reaches_leaders_only_and_the_group_reaches_itself(rendered):
    docs = rendered[OVERLAY]
    lws = one(docs, "LeaderWorkerSet")
    name = lws["metadata"]["name"]
    assert not by_kind(docs, "Deployment"), "the LeaderWorkerSet replaces the Deployment"
    assert name not in {s["metadata"]["name"] for s in by_kind(docs, "Service")}, (
        "LWS makes a headless Service so named"
    )
    labels = {
        role: {
            **lws["spec"]["leaderWorkerTemplate"][role]["metadata"]["labels"],
            "leaderworkerset.sigs.k8s.io/name": name,
        }
        for role in ("leaderTemplate", "workerTemplate")
    }
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= labels["leaderTemplate"].items()
    assert not service["spec"]["selector"].items() <= labels["workerTemplate"].items()
    pdb = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert all(pdb.items() <= pod.items() for pod in labels.values())
    assert one(docs, "ScaledObject")["spec"]["scaleTargetRef"] == {
        "apiVersion": lws["apiVersion"],
        "kind": "LeaderWorkerSet",
        "name": name,
    }
    (group_policy,) = [p for p in by_kind(docs, "NetworkPolicy") if "leaderworkerset.sigs.k8s.io/name" in str(p)]
    selector = {"matchLabels": {"leaderworkerset.sigs.k8s.io/name": name}}
    assert group_policy["spec"]["podSelector"] == selector
    assert group_policy["spec"]["ingress"] == [{"from": [{"podSelector": selector}]}], "any port within the group"
    base_image = one(rendered["overlays/fp16"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = lws["spec"]["leaderWorkerTemplate"][role]["spec"]
        assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {base_image}


def test_checkov_passes_on_the_group_pods(rendered, tmp_path):
    """checkov knows no LeaderWorkerSet: its two pod templates are scanned as the Deployments they could be, with
    the overlay's NetworkPolicies, and skips only what the LeaderWorkerSet or a template gives a reason for."""
    docs = rendered[OVERLAY]
    lws = one(docs, "LeaderWorkerSet")
    wrapped = []
    for role in ("leaderTemplate", "workerTemplate"):
        template = copy.deepcopy(lws["spec"]["leaderWorkerTemplate"][role])
        template["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/name"] = lws["metadata"]["name"]  # LWS adds it
        doc = pod_template_as_deployment(f"tsumugi-{role.removesuffix('Template')}", template)
        annotations = {**lws["metadata"]["annotations"], **template["metadata"].get("annotations", {})}
        doc["metadata"].update(namespace=lws["metadata"]["namespace"], annotations=annotations)
        wrapped.append(doc)
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump_all(wrapped + by_kind(docs, "NetworkPolicy")))
    reports = checkov(["-d", str(tmp_path), "--framework", "kubernetes"])
    failed, skipped = failures_and_skips(reports)
    assert reports[0]["summary"]["passed"] > 100 and not failed, failed
    assert {check["check_id"] for check in skipped} <= {*EXPECTED_SKIPS, "CKV_K8S_8", "CKV_K8S_9"}
    assert {c["check_id"] for c in skipped if "leader" in c["resource"]} <= EXPECTED_SKIPS, "the leader has probes"


def planned(command: str) -> dict:
    script, *args = shlex.split(command)
    result = run([sys.executable, str(ROOT / script), *args], timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_multi_node_sizing_is_the_planners(rendered):
    """Per pod: the planner's sizing of the whole model on one node of this GPU class (its GPU count is the
    tensor-parallel size). max-num-seqs: the planner over the group's GPUs as one memory pool."""
    docs = rendered[OVERLAY]
    lws = one(docs, "LeaderWorkerSet")
    node, group = (
        planned(lws["metadata"]["annotations"][key]) for key in ("tsumugi.dev/sizing", "tsumugi.dev/sizing-group")
    )
    config = serving_config(docs)["data"]
    leader = containers(lws, "leaderTemplate")
    nnodes = int(flag(leader["args"], "--nnodes"))
    assert group["planner"]["fits"]
    assert group["planner"]["gpu_gib"] == node["planner"]["gpu_gib"] * nnodes * int(node["nvidia.com/gpu"])
    assert config["TSUMUGI_TENSOR_PARALLEL_SIZE"] == node["TSUMUGI_TENSOR_PARALLEL_SIZE"]
    assert config["TSUMUGI_MAX_NUM_SEQS"] == group["TSUMUGI_MAX_NUM_SEQS"]
    assert config["TSUMUGI_MAX_MODEL_LEN"] == node["TSUMUGI_MAX_MODEL_LEN"] == group["TSUMUGI_MAX_MODEL_LEN"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = lws["spec"]["leaderWorkerTemplate"][role]["spec"]
        (container,) = pod["containers"]
        for resources in (container["resources"]["requests"], container["resources"]["limits"]):
            assert (resources[GPU], resources["cpu"], resources["memory"]) == (node[GPU], node["cpu"], node["memory"])
        assert [v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "dshm"] == [node["shm"]]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == [node["gpu_memory_mib_gt"]]


# -- the TrainJob --------------------------------------------------------------------------------------------


def check_trainjob(docs: list[dict], serving_docs: list[dict]) -> None:
    trainjob = one(docs, "TrainJob")
    trainer = trainjob["spec"]["trainer"]
    runtime = yaml.safe_load(TORCH_DISTRIBUTED_RUNTIME.read_text())
    assert trainjob["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert trainjob["spec"]["runtimeRef"]["kind"] == runtime["kind"] and "torch" in runtime["spec"]["mlPolicy"]
    assert trainer["command"] == ["torchrun"] and trainer["args"][:4] == [
        "--module",
        "training",
        "sft",
        "--method=lora",
    ]
    assert not [a for a in trainer["command"] + trainer["args"] if TORCHRUN_LAYOUT_FLAGS.match(a)], "PET_* say it"
    gpus = {trainer["resourcesPerNode"][kind][GPU] for kind in ("requests", "limits")}
    assert gpus == {str(trainer["numProcPerNode"])}, "PET_NPROC_PER_NODE = one process per GPU"
    assert trainer["numNodes"] >= 2
    (patch,) = trainjob["spec"]["runtimePatches"]
    (job_patch,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    (runtime_job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job_patch["name"] == runtime_job["name"]
    pod = job_patch["template"]["spec"]["template"]["spec"]
    runtime_containers = {c["name"] for c in runtime_job["template"]["spec"]["template"]["spec"]["containers"]}
    assert {c["name"] for c in pod["containers"]} <= runtime_containers
    (account,) = [a for a in by_kind(docs, "ServiceAccount") if a["metadata"]["name"] == pod["serviceAccountName"]]
    assert account["automountServiceAccountToken"] is False
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {one(serving_docs, "PersistentVolumeClaim")["metadata"]["name"]}
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "jobset.sigs.k8s.io/jobset-name": trainjob["metadata"]["name"]
    }


def test_the_trainjob_states_its_layout_once_for_the_torch_runtime(rendered):
    check_trainjob(rendered["training/multi-gpu"], rendered["overlays/lora"])


# -- scale to zero -------------------------------------------------------------------------------------------


def check_scaled_objects_can_wake(docs: list[dict]) -> None:
    for scaled in by_kind(docs, "ScaledObject"):
        floor = scaled["spec"].get("minReplicaCount", 0)  # KEDA's default is 0
        queries = [t["metadata"].get("query", "") for t in scaled["spec"]["triggers"]]
        wakes_from_zero = any(q and not POD_SERIES.search(q) for q in queries)
        assert floor >= 1 or wakes_from_zero, f"{scaled['metadata']['name']}: at zero pods {queries} read nothing"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_autoscaler_scales_to_a_zero_it_cannot_wake_from(rendered, name):
    check_scaled_objects_can_wake(rendered[name])


# -- the checks above can fail --------------------------------------------------------------------------------


def test_the_layout_and_trainjob_checks_fail_on_broken_manifests(rendered):
    def edited(docs: list[dict], kind: str, edit) -> list[dict]:
        copied = copy.deepcopy(docs)
        edit(one(copied, kind))
        return copied

    def worker_pp(lws):
        args = containers(lws, "workerTemplate")["args"]
        args[:] = [a.replace("--pipeline-parallel-size=2", "--pipeline-parallel-size=4") for a in args]

    def group_size(lws):
        lws["spec"]["leaderWorkerTemplate"]["size"] = 3

    def explicit_nnodes(job):
        job["spec"]["trainer"]["args"].insert(0, "--nnodes=4")

    def procs(job):
        job["spec"]["trainer"]["numProcPerNode"] = 8

    def to_zero(scaled):
        scaled["spec"]["minReplicaCount"] = 0

    multi_node, training, lora = rendered[OVERLAY], rendered["training/multi-gpu"], rendered["overlays/lora"]
    cases = [
        lambda: check_parallel_layout(edited(multi_node, "LeaderWorkerSet", worker_pp)),
        lambda: check_parallel_layout(edited(multi_node, "LeaderWorkerSet", group_size)),
        lambda: check_trainjob(edited(training, "TrainJob", explicit_nnodes), lora),
        lambda: check_trainjob(edited(training, "TrainJob", procs), lora),
        lambda: check_scaled_objects_can_wake(edited(lora, "ScaledObject", to_zero)),
    ]
    for case in cases:
        with pytest.raises(AssertionError):
            case()
