"""Schema validation of rendered manifests, strict enough to fail where an API server would refuse.

Built-in kinds: kubernetes-validate's strict JSON schemas for KUBERNETES_VERSION (unknown fields, removed
API versions and unknown kinds are errors, not warnings). Prometheus Operator and KEDA resources: cloudcoil's
typed pydantic models; pydantic ignores unknown keys, so a round trip (validate, dump what was set, compare)
turns every dropped key into an error. The scale-out resources (InferencePool, InferenceObjective,
InferenceModelRewrite, HTTPRoute, LeaderWorkerSet, TrainJob): the upstream CRDs kept under deploy/crds/,
turned into strict JSON schemas by deploy/crds/crd_to_json_schema.py; a LeaderWorkerSet's pod templates are
also validated as a Deployment's, against the Kubernetes version's own schema.
"""

from __future__ import annotations

import functools

import jsonschema
import kubernetes_validate
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from deploy.crds.crd_to_json_schema import json_schemas
from tests.deploy.tools import KUBERNETES_VERSION

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
}


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


@functools.cache
def fetched_crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator for each served version of the CRDs under deploy/crds/ (read once)."""
    return {key: jsonschema.Draft7Validator(schema) for key, schema in json_schemas().items()}


def validate_fetched_crd_resource(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    validator = fetched_crd_validators()[(doc["apiVersion"], doc["kind"])]
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]
    if errors:
        raise ManifestError(f"{doc['kind']}/{doc['metadata']['name']}: " + "; ".join(sorted(errors)[:5]))
    if doc["kind"] == "LeaderWorkerSet":
        templates = doc["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            validate_builtin(pod_template_as_deployment(f"{doc['metadata']['name']}-{role}", templates[role]), version)


def pod_template_as_deployment(name: str, template: dict) -> dict:
    """A pod template wrapped as the Deployment it could be, so the Kubernetes version's own schema judges it."""
    labels = template.get("metadata", {}).get("labels", {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": labels}, "template": template},
    }


def validate_builtin(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
        raise ManifestError(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error}") from error


def validate(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    """Raise ManifestError unless `doc` would be accepted by an API server of `version` with our CRDs."""
    if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
        validate_custom_resource(doc)
    elif (doc["apiVersion"], doc["kind"]) in fetched_crd_validators():
        validate_fetched_crd_resource(doc, version)
    else:
        validate_builtin(doc, version)
