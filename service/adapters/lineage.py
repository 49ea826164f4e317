"""What a served model is: the training manifest next to its weights, and the chain of artifacts it came from.

`python -m training sft|merge|quantize` writes `training_manifest.json` into every directory it produces
(`training/manifest.py`). A derived artifact (merged, quantized) names its parent by the SHA-256 of the parent's
manifest file (`parent.manifest_sha256`) and embeds that manifest (`source`), so one file holds the whole chain
adapter → merged → AWQ. The service reads it at load, logs it, and returns it from `GET /v1/models/{id}`, with
each link checked: an embedded manifest re-serialised the way training writes it must hash to the value its
child recorded. A model directory without a manifest (a hub model, a fine-tune made elsewhere) has no lineage.

Licence terms (`training/licences.py`) travel in the manifest's `licence` record: the intended use, each input's
declared terms, and the obligations (attribution, share-alike, name prefix, user threshold). A base model that
tsumugi did not make can declare its terms in `licence.yaml` in its directory, the same file training reads.
`--require-licence-metadata` refuses to serve a model or adapter with neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from service.errors import ArtifactError

MANIFEST_FILE = "training_manifest.json"  # the name training/manifest.py writes
LICENCE_FILE = "licence.yaml"  # a model directory's declared terms, as training/licences.py reads them


class ManifestError(ArtifactError):
    """A manifest file that exists but cannot be read: the artifact is not served rather than served unlabelled."""


def manifest_text(manifest: dict) -> str:
    """The exact text training writes for a manifest (`json.dumps(indent=1, ensure_ascii=False)`)."""
    return json.dumps(manifest, indent=1, ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Lineage:
    """A served model's manifest and the SHA-256 of its file."""

    manifest_sha256: str
    manifest: dict

    def chain(self) -> list[dict]:
        """This artifact first, then each ancestor: kind, created, manifest hash, and whether the embedded
        ancestor manifest matches the hash its child recorded (`verified`; the artifact's own file is the
        reference, so it is True)."""
        links, manifest, expected, verified = [], self.manifest, self.manifest_sha256, True
        while isinstance(manifest, dict):
            links.append({"kind": manifest.get("kind"), "created": manifest.get("created"),
                          "manifest_sha256": expected, "verified": verified})  # fmt: skip
            parent, source = manifest.get("parent"), manifest.get("source")
            if not isinstance(source, dict):
                break
            expected = parent.get("manifest_sha256") if isinstance(parent, dict) else None
            verified = expected is not None and sha256_text(manifest_text(source)) == expected
            manifest = source
        return links

    def root(self) -> dict:
        """The first manifest of the chain: the training run (base model, data files, recipe)."""
        manifest = self.manifest
        while isinstance(manifest.get("source"), dict):
            manifest = manifest["source"]
        return manifest

    def summary(self) -> dict:
        """One log line's worth: the chain, and the training run's base model and data files."""
        root = self.root()
        return {
            "chain": [f"{link['kind']}:{link['manifest_sha256'][:12] if link['manifest_sha256'] else '?'}"
                      for link in self.chain()],
            "base_model": root.get("base_model"),
            "data_files": [{"path": f.get("path"), "sha256": f.get("sha256")} for f in root.get("data_files", [])],
        }  # fmt: skip

    def as_response(self) -> dict:
        return {"manifest_sha256": self.manifest_sha256, "chain": self.chain(), "manifest": self.manifest}


def read_lineage(directory: str | Path) -> Lineage | None:
    """The lineage of a model or adapter directory, None when it has no manifest (or is not a directory)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not a readable JSON manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a manifest must be a JSON object")
    return Lineage(hashlib.sha256(raw).hexdigest(), manifest)


def read_licence(directory: str | Path, lineage: Lineage | None) -> dict | None:
    """The licence record of a served model: the manifest's (what training assessed and the obligations it
    derived), else the terms declared in the directory's `licence.yaml` (as `{"declared": ...}`), else None."""
    if lineage is not None and isinstance(lineage.manifest.get("licence"), dict):
        return lineage.manifest["licence"]
    path = Path(directory) / LICENCE_FILE
    if not path.is_file():
        return None
    try:
        declared = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ManifestError(f"{path}: not readable YAML ({error})") from None
    if not isinstance(declared, dict) or not {"licence", "known"} & declared.keys():
        raise ManifestError(f"{path}: must declare 'licence: ...' (with its terms) or 'known: NAME'")
    return {"declared": declared}
