"""The single-host compose stack and the init container's fetch script, checked without Docker or network:
the compose file only mounts files that exist and keeps the drain inside its stop grace period; the fetch
script fills the cache once, atomically, and skips a complete copy."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml

from tests.deploy.tools import DEPLOY, K8S, ROOT, run

COMPOSE = DEPLOY / "compose.yaml"
FETCH_SCRIPT = K8S / "base" / "fetch-model.sh"


def seconds(duration: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
    return int(value) * (60 if unit == "m" else 1)


def test_compose_mounts_existing_files_and_builds_the_serving_target():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"tsumugi", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name} image must be pinned"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    build = services["tsumugi"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert re.search(rf"^FROM \S+ AS {build['target']}$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)


def test_compose_gives_the_drain_time_to_finish():
    tsumugi = yaml.safe_load(COMPOSE.read_text())["services"]["tsumugi"]
    drain = int(tsumugi["environment"]["TSUMUGI_DRAIN_TIMEOUT"])
    assert seconds(tsumugi["stop_grace_period"]) >= drain + 5
    assert tsumugi["read_only"] is True and tsumugi["cap_drop"] == ["ALL"]


def test_compose_prometheus_loads_the_shared_alert_rules():
    prometheus = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounted = {volume.split(":")[1] for volume in prometheus["volumes"]}
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tsumugi" and job["static_configs"][0]["targets"] == ["tsumugi:8000"]


def fake_aws(bin_dir: Path) -> None:
    """An `aws` CLI stand-in: `aws s3 sync --only-show-errors SRC DEST` writes a weights file into DEST."""
    script = bin_dir / "aws"
    script.write_text('#!/bin/sh\necho "$4" > "$5/model.safetensors"\necho "$5" >> "$FAKE_AWS_LOG"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def fetch(tmp_path: Path, target: Path, lora_modules: str = ""):
    env = {
        "TSUMUGI_LORA_MODULES": lora_modules,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "TSUMUGI_MODEL": str(target),
        "MODEL_SOURCE": "s3://bucket/llama",
        "FAKE_AWS_LOG": str(tmp_path / "aws.log"),
    }
    return run(["sh", str(FETCH_SCRIPT)], timeout=30, env=env)


def test_fetch_script_downloads_once_into_place(tmp_path):
    (tmp_path / "bin").mkdir()
    fake_aws(tmp_path / "bin")
    target = tmp_path / "models" / "llama"
    target.parent.mkdir()
    first = fetch(tmp_path, target)
    assert first.returncode == 0, first.stderr
    assert (target / "model.safetensors").read_text().strip() == "s3://bucket/llama"
    assert (target / ".tsumugi-complete").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["llama"], "no partial copies left behind"
    second = fetch(tmp_path, target)
    assert second.returncode == 0 and "cache hit" in second.stdout
    assert len((tmp_path / "aws.log").read_text().splitlines()) == 1, "a complete copy is not fetched again"


def test_fetch_script_replaces_an_incomplete_copy(tmp_path):
    """A copy without the completion marker (pod killed mid-download) is never trusted."""
    (tmp_path / "bin").mkdir()
    fake_aws(tmp_path / "bin")
    target = tmp_path / "models" / "llama"
    target.mkdir(parents=True)
    (target / "half-written.safetensors").write_text("truncated")
    result = fetch(tmp_path, target)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.iterdir()) == [".tsumugi-complete", "model.safetensors"]


def test_fetch_script_refuses_to_start_without_the_trained_adapters(tmp_path):
    (tmp_path / "bin").mkdir()
    fake_aws(tmp_path / "bin")
    target = tmp_path / "models" / "llama"
    target.parent.mkdir()
    adapter = tmp_path / "models" / "adapters" / "ja-alpaca"
    missing = fetch(tmp_path, target, lora_modules=f"ja-alpaca={adapter}")
    assert missing.returncode != 0 and "ja-alpaca missing" in missing.stderr
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    present = fetch(tmp_path, target, lora_modules=f"ja-alpaca={adapter}")
    assert present.returncode == 0 and "cache hit" in present.stdout, present.stderr
