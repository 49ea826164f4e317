"""Schema validation of rendered manifests, strict enough to fail where an API server would refuse.

Built-in kinds: kubernetes-validate's strict JSON schemas for KUBERNETES_VERSION (unknown fields, removed
API versions and unknown kinds are errors, not warnings). Custom resources: cloudcoil's typed pydantic
models of the Prometheus Operator and KEDA CRDs; pydantic ignores unknown keys, so a round trip
(validate, dump what was set, compare) turns every dropped key into an error. JobSet has no typed model
on PyPI: its pod template is validated as a batch/v1 Job and its own fields against the v1alpha2 API.
"""

from __future__ import annotations

import kubernetes_validate
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from tests.deploy.tools import KUBERNETES_VERSION

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
}

# sigs.k8s.io/jobset api/jobset/v1alpha2 JobSetSpec and ReplicatedJob fields.
JOBSET_SPEC_FIELDS = {
    "replicatedJobs",
    "network",
    "successPolicy",
    "failurePolicy",
    "startupPolicy",
    "suspend",
    "coordinator",
    "managedBy",
    "ttlSecondsAfterFinished",
}
JOBSET_REPLICATED_JOB_FIELDS = {"name", "groupName", "template", "replicas", "dependsOn"}
JOBSET_NETWORK_FIELDS = {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}


class ManifestError(ValueError):
    """A manifest an API server (or the CRD's schema) would reject."""


def _dropped_keys(original, dumped, path: str = "") -> list[str]:
    """Keys present in `original` but missing from the model's dump: fields the schema does not know."""
    if isinstance(original, dict) and isinstance(dumped, dict):
        missing = [f"{path}.{key}".lstrip(".") for key in original if key not in dumped]
        for key in original.keys() & dumped.keys():
            missing += _dropped_keys(original[key], dumped[key], f"{path}.{key}")
        return missing
    if isinstance(original, list) and isinstance(dumped, list):
        return [
            m
            for i, (a, b) in enumerate(zip(original, dumped, strict=False))
            for m in _dropped_keys(a, b, f"{path}[{i}]")
        ]
    return []


def validate_custom_resource(doc: dict) -> None:
    model = CRD_MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        raise ManifestError(f"no schema for {doc['apiVersion']} {doc['kind']}")
    try:
        parsed = model.model_validate(doc)
    except Exception as error:  # pydantic.ValidationError: wrong types, missing required fields
        raise ManifestError(f"{doc['kind']}/{doc['metadata']['name']}: {error}") from error
    unknown = _dropped_keys(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    if unknown:
        raise ManifestError(f"{doc['kind']}/{doc['metadata']['name']}: unknown fields {unknown}")


def validate_jobset(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    if doc["apiVersion"] != "jobset.x-k8s.io/v1alpha2":
        raise ManifestError(f"JobSet apiVersion {doc['apiVersion']} is not jobset.x-k8s.io/v1alpha2")
    spec = doc["spec"]
    unknown = set(spec) - JOBSET_SPEC_FIELDS
    unknown |= set(spec.get("network", {})) - JOBSET_NETWORK_FIELDS
    for job in spec["replicatedJobs"]:
        unknown |= set(job) - JOBSET_REPLICATED_JOB_FIELDS
        as_job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": f"{doc['metadata']['name']}-{job['name']}",
                **job["template"].get("metadata", {}),
            },
            "spec": job["template"]["spec"],
        }
        validate_builtin(as_job, version)
    if unknown:
        raise ManifestError(f"JobSet/{doc['metadata']['name']}: unknown fields {sorted(unknown)}")


def validate_builtin(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
        raise ManifestError(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error}") from error


def validate(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    """Raise ManifestError unless `doc` would be accepted by an API server of `version` with our CRDs."""
    if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
        validate_custom_resource(doc)
    elif doc["kind"] == "JobSet":
        validate_jobset(doc, version)
    else:
        validate_builtin(doc, version)
