"""Settings: flags override environment, lists parse from both, bad values fail before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import main, parse_args
from service.config import LoRAModule, Settings


def test_flags_are_named_like_vllm_serve():
    args = parse_args(
        ["--model", "m", "--lora-modules", "a=/x", "b=/y", "--api-key", "k1", "--api-key", "k2",
         "--max-model-len", "4096", "--enforce-eager", "--tensor-parallel-size", "2"]
    )  # fmt: skip
    settings = Settings(**args)
    assert settings.lora_modules == [
        LoRAModule(name="a", path=Path("/x")),
        LoRAModule(name="b", path=Path("/y")),
    ]
    assert settings.api_keys == ["k1", "k2"]
    assert settings.max_model_len == 4096 and settings.enforce_eager and settings.tensor_parallel_size == 2


# Every public flag, as deployments and docs use them: a rename or a lost flag fails here (they are generated from
# `Settings`, so a field rename would otherwise change the command line silently).
PUBLIC_FLAGS = [
    "--adapter-dir", "--admin-api-key", "--api-key", "--api-keys-file", "--block-size", "--chat-template",
    "--data-parallel-size", "--drain-timeout", "--dtype", "--enable-auto-tool-choice", "--enable-lora",
    "--enforce-eager", "--gpu-memory-utilization", "--help", "--host", "--kv-cache-memory-bytes",
    "--kv-events-config", "--log-level", "--lora-modules", "--master-addr", "--master-port", "--max-cpu-loras",
    "--max-lora-rank", "--max-loras", "--max-model-len", "--max-num-batched-tokens", "--max-num-queued-requests",
    "--max-num-seqs", "--max-queued-prompt-tokens", "--max-request-body-bytes", "--model", "--nnodes", "--no-auth",
    "--node-rank", "--pipeline-parallel-size", "--port", "--quantization", "--request-timeout",
    "--require-licence-metadata", "--resolve-adapters-on-request", "--seed", "--served-model-name",
    "--ssl-certfile", "--ssl-keyfile", "--tensor-parallel-size", "--tokenizer", "--tool-call-parser",
    "--watch-adapter-dir", "-h",
]  # fmt: skip


def test_the_public_flags_are_exactly_these():
    import argparse

    from service.config import cli_flags

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    cli_flags(parser)
    assert sorted(option for action in parser._actions for option in action.option_strings) == PUBLIC_FLAGS


def test_environment_fills_what_flags_leave(monkeypatch):
    monkeypatch.setenv("TSUMUGI_MODEL", "/models/env")
    monkeypatch.setenv("TSUMUGI_PORT", "9000")
    monkeypatch.setenv("TSUMUGI_LORA_MODULES", "ja=/a/ja, support=/a/support")
    monkeypatch.setenv("TSUMUGI_API_KEYS", "k1,k2")
    settings = Settings(**parse_args(["--port", "9100"]))
    assert settings.model == "/models/env" and settings.port == 9100
    assert [m.name for m in settings.lora_modules] == ["ja", "support"]
    assert settings.api_keys == ["k1", "k2"]
    assert settings.model_name == "/models/env"


@pytest.mark.parametrize(
    "kwargs",
    [{"lora_modules": ["noequals"]}, {"port": 70000}, {"gpu_memory_utilization": 1.5}, {"max_loras": 0}],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        Settings(**kwargs)


def test_cli_reports_bad_configuration_and_exits_2(capsys):
    assert main(["--port", "-1"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tool-call-parser", "hermes"], "--tool-call-parser is used only with --enable-auto-tool-choice"),
        (["--enable-auto-tool-choice", "--tool-call-parser", "no-such-parser"], "no-such-parser: unknown"),
        (["--chat-template", "/no/such/template.jinja"], "no such file"),
    ],
)
def test_tool_flags_are_checked_before_loading(capsys, flags: list[str], message: str):
    assert main(["--no-auth", *flags]) == 2
    assert message in capsys.readouterr().err


def test_chat_template_flag_reads_a_file_or_takes_the_template(tmp_path: Path):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "t.jinja").write_text(template)
    assert Settings(no_auth=True, chat_template=str(tmp_path / "t.jinja")).read_chat_template() == template
    assert Settings(no_auth=True, chat_template=template).read_chat_template() == template


# ---- flags pasted from `vllm serve` docs and KServe's LLMInferenceService -------------------------------------
def test_vllm_serve_flags_are_accepted_with_vllm_meaning():
    args = parse_args(
        ["--model", "m", "--no-auth", "--enable-lora", "--block-size", "32", "--pipeline-parallel-size", "2",
         "--data-parallel-size", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1",
         "--master-port", "29600", "--kv-events-config", '{"enable_kv_cache_events": true, "topic": "kv"}']
    )  # fmt: skip
    settings = Settings(**args)
    assert settings.enable_lora and settings.block_size == 32
    assert (settings.pipeline_parallel_size, settings.data_parallel_size, settings.nnodes) == (2, 2, 2)
    assert (settings.node_rank, settings.master_addr, settings.master_port) == (0, "10.0.0.1", 29600)
    assert settings.kv_events_config == {"enable_kv_cache_events": True, "topic": "kv"}


def test_lora_modules_take_vllms_json_form_beside_name_equals_path():
    spec = '{"name": "ja", "path": "/a/ja", "base_model_name": "m"}'
    settings = Settings(**parse_args(["--model", "m", "--no-auth", "--lora-modules", spec, "support=/a/support"]))
    assert settings.lora_modules == [
        LoRAModule(name="ja", path=Path("/a/ja"), base_model_name="m"),
        LoRAModule(name="support", path=Path("/a/support")),
    ]


@pytest.mark.parametrize(
    "value",
    ['[{"name": "ja", "path": "/a/ja"}, "support=/a/support"]', '{"name": "ja", "path": "/a/ja"}', "ja=/a/ja"],
)
def test_lora_modules_from_the_environment_keep_json_whole(monkeypatch, value: str):
    monkeypatch.setenv("TSUMUGI_LORA_MODULES", value)
    assert Settings(no_auth=True).lora_modules[0] == LoRAModule(name="ja", path=Path("/a/ja"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--node-rank", "1"], "run `vllm serve MODEL --headless"),
        (["--lora-modules", '{"name": "ja"}'], "path: Field required"),
        (["--lora-modules", '{"name": "ja", "path": "/a", "rank": 8}'], "rank: Extra inputs are not permitted"),
        (
            ["--model", "m", "--lora-modules", '{"name": "ja", "path": "/a", "base_model_name": "other"}'],
            "base_model_name 'other' is not the served model ('m')",
        ),
        (["--kv-events-config", "enable"], "expected a JSON object"),
        (["--kv-events-config", "[1]"], "expected a JSON object"),
        (["--ssl-keyfile", __file__], "--ssl-keyfile is the key of --ssl-certfile"),
        (["--ssl-certfile", "/no/such/cert.pem"], "no such file"),
        (["--ssl-certfile", __file__], "cannot serve TLS"),
        (["--resolve-adapters-on-request"], "loads from --adapter-dir; pass both"),
    ],
)
def test_flags_tsumugi_cannot_honour_fail_in_one_line(monkeypatch, capsys, flags: list[str], message: str):
    def serve_instead_of_refusing(self) -> None:  # a refusal that broke would start a server and never return
        raise AssertionError(f"{flags} reached the server instead of being refused")

    monkeypatch.setattr("service.__main__.DrainingServer.run", serve_instead_of_refusing)
    assert main(["--no-auth", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_certificate_and_its_key_are_checked_together(tmp_path: Path):
    from tests.service.self_signed import write_self_signed

    cert, key = write_self_signed(tmp_path / "a")
    _, other_key = write_self_signed(tmp_path / "b")
    assert Settings(no_auth=True, ssl_certfile=cert, ssl_keyfile=key).ssl_certfile == cert
    with pytest.raises(ValidationError, match="cannot serve TLS"):
        Settings(no_auth=True, ssl_certfile=cert, ssl_keyfile=other_key)
