"""The SFT config model, the flags generated from it, and the one-line errors of `python -m training`.

Fast: no model is loaded and no training step runs. A user mistake must end as exit code 2 and one line
`error: ...` naming what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.__main__ import build_parser, main
from training.config import (
    CLI_FLAGS,
    ConfigError,
    config_field,
    load_config,
    overrides_from_flags,
    sft_flags,
)
from tsumugi.cli_flags import add_flags

from .conftest import REPO

REQUIRED = {"base": "m", "out": "o", "data.paths": ["d.jsonl"]}
# Every flag `sft` had before the flags were generated from the model: none may disappear.
FLAGS_BEFORE = [
    "--base", "--data", "--out", "--method", "--template", "--max-steps", "--epochs", "--lr", "--scheduler",
    "--warmup-ratio", "--lora-r", "--lora-alpha", "--lora-dropout", "--target-modules", "--batch-size", "--grad-accum",
    "--seed", "--precision", "--max-length", "--validation-fraction", "--save-steps", "--eval-steps",
    "--gradient-checkpointing", "--packing", "--skip-invalid", "--resume", "--keep-checkpoints", "--intended-use",
    "--accept-licence-risk",
]  # fmt: skip


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `python -m training` in this process; assert the user-error contract and return the message."""
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"base: m\nout: {folder / 'out'}\n{text}", encoding="utf-8")
    return path


def test_yaml_lr_without_a_dot_is_accepted_as_a_number(tmp_path):
    assert yaml.safe_load("lr: 2e-4") == {"lr": "2e-4"}  # PyYAML (YAML 1.1) reads it as a string
    cfg = load_config(write_config(tmp_path, "data: {paths: [d.jsonl]}\noptim: {lr: 2e-4}\n"), {})
    assert cfg.optim.lr == 2e-4 and type(cfg.optim.lr) is float


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("optim: {lr: abc}", "config 'optim.lr': Input should be a valid number"),
        ("seed: abc", "config 'seed': Input should be a valid integer"),
        ("seed: true", "config 'seed': must be a number, not true/false"),
        (
            "data: {paths: [d.jsonl], validation_fraction: 1.5}",
            "config 'data.validation_fraction': Input should be less",
        ),
        ("optim: {lr: 0}", "config 'optim.lr': Input should be greater than 0"),
        ("lora: {rank: 4}", "config 'lora.rank': unknown key"),
        ("gradient_checkpointing: 1.5", "config 'gradient_checkpointing': must be true, false or a fraction"),
        ("data: {paths: [d.jsonl], packing: maybe}", "config 'data.packing': must be true, false or auto"),
        ("method: dora", "config 'method': Input should be 'lora' or 'qlora'"),
        ("optim: {batch_size: 0}", "config 'optim.batch_size': Input should be greater than 0"),
        ("optim: {epochs: 0}", "config 'optim': set max_steps or epochs"),
    ],
)
def test_bad_config_values_are_one_line_errors_naming_the_key(tmp_path, capsys, yaml_text, message):
    if "paths" not in yaml_text:
        yaml_text += "\ndata: {paths: [d.jsonl]}"
    stderr = run_cli(["sft", "--config", str(write_config(tmp_path, yaml_text + "\n"))], capsys)
    assert message in stderr


def test_every_problem_is_reported_on_the_one_line(capsys):
    stderr = run_cli(["sft", "--base", "m", "--seed", "-1", "--lr", "0"], capsys)
    for part in ("config 'out': is required", "config 'data': is required: set it in the config file or with --data",
                 "config 'seed': Input should be greater than or equal to 0", "config 'optim.lr'"):  # fmt: skip
        assert part in stderr


def test_a_real_process_prints_no_traceback(tmp_path):
    config = write_config(tmp_path, "data: {paths: [d.jsonl]}\noptim: {lr: abc}\n")
    command = [sys.executable, "-m", "training", "sft", "--config", str(config)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: config 'optim.lr': Input should be a valid number, unable to parse string as a number, got 'abc'"
    ]


def test_a_missing_data_file_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    stderr = run_cli(["sft", "--base", "no-such-model", "--out", str(tmp_path / "o"), "--data", str(missing)], capsys)
    assert f"{missing}: no such file" in stderr  # found before the base model is even looked at
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_memory_on_a_directory_without_config_json_is_a_one_line_error(tmp_path, capsys):
    stderr = run_cli(["memory", "--model", str(tmp_path), "--mode", "serve"], capsys)
    assert f"{tmp_path}: a directory without config.json" in stderr
    assert "--checkpoint-fraction must be between 0 and 1, got 2.0" in run_cli(
        ["memory", "--model", "llama-3-8b", "--mode", "lora", "--checkpoint-fraction", "2"], capsys
    )


def test_quantize_fails_on_layer_widths_before_loading_anything(tmp_path, capsys, monkeypatch):
    """Widths 100 and 200: no group size of 128/64/32 divides them, which config.json alone shows."""
    model = tmp_path / "model"
    model.mkdir()
    shape = {"vocab_size": 64, "hidden_size": 100, "intermediate_size": 200, "num_hidden_layers": 1}
    shape |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    (model / "config.json").write_text(json.dumps(shape), encoding="utf-8")
    for heavy in ("llmcompressor", "transformers"):  # importing either now fails: the error must come first
        monkeypatch.setitem(sys.modules, heavy, None)
    argv = ["quantize", "--model", str(model), "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "q")]
    assert "no group size in (128, 64, 32) divides all layer widths [100, 200]" in run_cli(argv, capsys)
    assert "--group-size 64 does not divide" in run_cli([*argv, "--group-size", "64"], capsys)


def test_memory_command_imports_only_the_standard_library_and_yaml():
    code = (
        "import sys; before = set(sys.modules)\n"
        "from training.__main__ import main\n"
        "assert main(['memory', '--model', 'llama-3-8b', '--mode', 'qlora', '--json']) == 0\n"
        "new = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "import json; print(json.dumps(sorted(new - set(sys.stdlib_module_names))))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    # tsumugi: the project's standard-library package (the flag generator every CLI shares)
    assert set(json.loads(result.stdout.splitlines()[-1])) <= {"training", "tsumugi", "yaml"}


def has_key(values: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def test_every_shipped_config_loads():
    """Configs without base/out/data (they expect them as flags) get placeholders for just those keys."""
    shipped = sorted((REPO / "training").rglob("*.yaml"))
    assert len(shipped) >= 3
    for path in shipped:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
        placeholders = {key: value for key, value in REQUIRED.items() if not has_key(values, key)}
        assert load_config(path, placeholders).method == values["method"], path


def sft_args(argv: list[str]) -> argparse.Namespace:
    return build_parser("sft").parse_args(["sft", *argv])


def sft_command_lines(value: object) -> list[list[str]]:
    """The arguments after `sft` of every container in a Kubernetes manifest that runs it."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in sft_command_lines(item)]
    if isinstance(value, list):
        if "sft" in value:
            return [value[value.index("sft") + 1 :]]
        return [found for item in value for found in sft_command_lines(item)]
    return []


def test_shipped_kubernetes_sft_command_lines_are_valid():
    manifests = sorted((REPO / "k8s" / "training").rglob("*.yaml"))
    lines = [
        line for path in manifests for doc in yaml.safe_load_all(path.read_text()) for line in sft_command_lines(doc)
    ]
    assert len(lines) >= 2
    for argv in lines:
        cfg = load_config(None, overrides_from_flags(sft_args(argv)))
        assert cfg.precision == "bf16" and cfg.gradient_checkpointing is True, argv


def test_each_flag_sets_an_existing_key_and_defaults_to_the_model():
    assert sorted(CLI_FLAGS) == sorted(FLAGS_BEFORE)
    parser = argparse.ArgumentParser()
    add_flags(parser, sft_flags())
    actions = {action.option_strings[0]: action for action in parser._actions if action.option_strings}
    for flag, dotted in CLI_FLAGS.items():
        field = config_field(dotted)  # KeyError for a key the model does not have
        assert field.description and actions[flag].dest == dotted
        assert actions[flag].default in (argparse.SUPPRESS, None), flag
    required_only = ["--base", "m", "--out", "o", "--data", "d.jsonl"]
    assert overrides_from_flags(sft_args(required_only)) == REQUIRED
    assert load_config(None, overrides_from_flags(sft_args(required_only))) == load_config(None, REQUIRED)


def test_flags_override_the_yaml_with_the_old_behaviour(tmp_path):
    config = write_config(tmp_path, "data: {paths: [d.jsonl]}\noptim: {max_steps: 100, lr: 0.1}\nresume: true\n")
    argv = ["--epochs", "2", "--lora-r", "4", "--target-modules", "all-linear", "--packing", "--no-resume"]
    cfg = load_config(config, overrides_from_flags(sft_args(argv)))
    assert (cfg.optim.epochs, cfg.optim.max_steps, cfg.optim.lr, cfg.lora.r) == (2.0, -1, 0.1, 4)
    assert cfg.lora.target_modules == "all-linear" and cfg.data.packing is True and cfg.resume is False
    modules = load_config(config, overrides_from_flags(sft_args(["--target-modules", "q_proj", "v_proj"])))
    assert modules.lora.target_modules == ["q_proj", "v_proj"] and modules.optim.max_steps == 100
    with pytest.raises(SystemExit):
        sft_args(["--epochs", "1", "--max-steps", "3"])


def test_to_dict_keeps_the_manifest_shape():
    cfg = load_config(None, REQUIRED)
    assert list(cfg.to_dict()) == [
        "base", "out", "method", "seed", "precision", "gradient_checkpointing", "save_steps", "save_total_limit",
        "eval_steps", "logging_steps", "resume", "keep_checkpoints", "intended_use", "accept_licence_risk", "lora",
        "data", "optim",
    ]  # fmt: skip
    assert cfg.to_dict()["data"] == {
        "paths": ["d.jsonl"], "template": "alpaca-ja", "validation_fraction": 0.05, "max_length": 512,
        "packing": "auto", "skip_invalid": False, "records": None,
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"config 'data\.records': lists a record twice"):
        load_config(None, REQUIRED | {"data.records": [3, 3]})
