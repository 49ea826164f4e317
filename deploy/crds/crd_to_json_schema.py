"""Turn the CustomResourceDefinitions kept under deploy/crds/ into strict JSON schemas, one per served version.

    python deploy/crds/crd_to_json_schema.py OUT_DIR

writes `<kind>_<version>.json` (lower case, kubeconform's `{{.ResourceKind}}_{{.ResourceAPIVersion}}` naming) for
every CRD here; tests/deploy/schema.py calls `json_schemas()` directly. An API server validates a custom resource
against the CRD's `openAPIV3Schema` and, with kubectl's default `--validate=strict`, refuses fields the schema
does not declare. JSON Schema allows unknown fields unless told otherwise, so the conversion adds
`additionalProperties: false` to every object that lists its properties (except where the CRD says
`x-kubernetes-preserve-unknown-fields`) and spells out the two Kubernetes extensions JSON Schema lacks:
`x-kubernetes-int-or-string` and `nullable`. CEL rules (`x-kubernetes-validations`) are not evaluated here.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

CRD_DIR = Path(__file__).resolve().parent


def strict(node: dict) -> dict:
    """A copy of one openAPIV3Schema node in which every declared object refuses undeclared fields."""
    node = copy.deepcopy(node)
    if node.pop("x-kubernetes-int-or-string", False):
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {name: strict(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in node:
            node[combinator] = [strict(child) for child in node[combinator]]
    return node


def version_schema(group: str, kind: str, version: dict) -> dict:
    """One served version as a document schema: apiVersion and kind pinned, metadata an object, the rest strict."""
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def crd_documents(directory: Path = CRD_DIR) -> list[dict]:
    """Every CustomResourceDefinition in the YAML files under `directory` (other documents are skipped)."""
    return [
        doc
        for path in sorted(directory.glob("*/*.yaml"))
        for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)  # libyaml: the CRDs are megabytes
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


def json_schemas(directory: Path = CRD_DIR) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD under `directory`."""
    schemas = {}
    for crd in crd_documents(directory):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[(f"{group}/{version['name']}", kind)] = version_schema(group, kind, version)
    return schemas


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: crd_to_json_schema.py OUT_DIR\n")
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for (api_version, kind), schema in json_schemas().items():
        (out / f"{kind.lower()}_{api_version.split('/')[1]}.json").write_text(json.dumps(schema, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
