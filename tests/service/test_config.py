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
    "--adapter-dir", "--admin-api-key", "--api-key", "--api-keys-file", "--chat-template", "--drain-timeout",
    "--dtype", "--enable-auto-tool-choice", "--enforce-eager", "--gpu-memory-utilization", "--help", "--host",
    "--kv-cache-memory-bytes", "--log-level", "--lora-modules", "--max-cpu-loras", "--max-lora-rank", "--max-loras",
    "--max-model-len", "--max-num-batched-tokens", "--max-num-queued-requests", "--max-num-seqs",
    "--max-queued-prompt-tokens", "--max-request-body-bytes", "--model", "--no-auth", "--port", "--quantization",
    "--request-timeout", "--require-licence-metadata", "--seed", "--served-model-name", "--tensor-parallel-size",
    "--tokenizer", "--tool-call-parser", "--watch-adapter-dir", "-h",
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
