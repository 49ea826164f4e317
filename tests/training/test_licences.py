"""The licence guard: declared terms (sidecars or the built-in table) against the intended use; conflicts stop
training with one line unless accepted with a reason; obligations are gathered for the manifest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.licences import KNOWN_TERMS, LicenceError, assess, data_terms, model_terms
from tsumugi.default_model import DEFAULT_MODEL

from .conftest import REPO, SAMPLE


def sidecar(data, text: str):
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    data.with_name(data.name + ".licence.yaml").write_text(text, encoding="utf-8")
    return data


@pytest.fixture
def ichikara(tmp_path):
    return sidecar(tmp_path / "ichikara.jsonl", "known: ichikara-instruction\n")


@pytest.fixture
def apache_base(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "licence.yaml").write_text("licence: Apache-2.0\n", encoding="utf-8")
    return str(tmp_path / "base")


def test_every_table_entry_cites_its_source():
    assert all(terms.source and terms.source.startswith("https://") for terms in KNOWN_TERMS.values())
    assert model_terms("meta-llama/Meta-Llama-3-8B-Instruct").attribution == "Built with Meta Llama 3"
    assert not KNOWN_TERMS["ichikara-instruction"].commercial_use


def test_the_shipped_data_and_default_model_declare_their_terms():
    assert data_terms(str(SAMPLE)).licence == "CC0-1.0"
    assert data_terms(str(REPO / "data" / "tools_ja_en.jsonl")).licence == "Apache-2.0"
    default_model = REPO / DEFAULT_MODEL
    if (default_model / "licence.yaml").is_file():  # written by service/default_model.py when it converts
        assert model_terms(str(default_model)).licence == "Apache-2.0"


@pytest.mark.parametrize("use", ["commercial", "internal"])
def test_non_commercial_data_is_refused_for_commercial_and_internal_use(ichikara, apache_base, use):
    with pytest.raises(LicenceError) as refused:
        assess(apache_base, [str(ichikara)], use, None)
    message = str(refused.value)
    assert f"data file {ichikara}: CC-BY-NC-SA-4.0 allows no commercial use, intended use is {use}" in message
    assert '--accept-licence-risk "REASON"' in message and "\n" not in message


def test_research_use_is_allowed_and_the_obligations_are_recorded(ichikara, apache_base):
    record = assess(apache_base, [str(ichikara)], "research", None)
    assert record["accepted_risk"] is None and record["intended_use"] == "research"
    assert record["obligations"] == {
        "attribution": [KNOWN_TERMS["ichikara-instruction"].attribution],
        "share_alike": ["CC-BY-NC-SA-4.0"],
        "name_prefix": [],
        "user_threshold": None,
        "non_commercial": True,
        "restricted_outputs": [],
    }
    assert [entry["input"] for entry in record["inputs"]] == [f"base model {apache_base}", f"data file {ichikara}"]


def test_an_accepted_risk_is_recorded_with_the_conflicts_it_accepted(ichikara, apache_base):
    record = assess(apache_base, [str(ichikara)], "commercial", "licensed separately from the authors, ticket 42")
    assert record["accepted_risk"]["reason"] == "licensed separately from the authors, ticket 42"
    assert record["accepted_risk"]["conflicts"] == [
        f"data file {ichikara}: CC-BY-NC-SA-4.0 allows no commercial use, intended use is commercial"
    ]


def test_undeclared_inputs_conflict_only_when_a_use_is_given(tmp_path):
    data = tmp_path / "plain.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    record = assess("some/unknown-model", [str(data)], None, None)  # nothing asked, nothing checked
    assert [entry["licence"] for entry in record["inputs"]] == [None, None]
    with pytest.raises(LicenceError, match=r"base model some/unknown-model: no licence declared.*data file"):
        assess("some/unknown-model", [str(data)], "research", None)


def test_provider_output_terms_and_llama_obligations(tmp_path):
    distilled = sidecar(tmp_path / "gpt-answers.jsonl", "known: openai-outputs\n")
    dolly = sidecar(tmp_path / "dolly.jsonl", "known: llm-jp/databricks-dolly-15k-ja\n")
    base = "meta-llama/Meta-Llama-3-8B-Instruct"
    with pytest.raises(LicenceError, match="outputs of OpenAI, whose terms restrict training competing models"):
        assess(base, [str(distilled)], "commercial", None)
    record = assess(base, [str(distilled), str(dolly)], "research", None)
    obligations = record["obligations"]
    assert obligations["name_prefix"] == ["Llama 3"] and obligations["user_threshold"] == 700_000_000
    assert "Built with Meta Llama 3" in obligations["attribution"] and obligations["share_alike"] == ["CC-BY-SA-3.0"]
    assert obligations["restricted_outputs"] == ["OpenAI"] and not obligations["non_commercial"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("licence: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must be a mapping"),
        ("known: some-licence-we-never-heard-of\n", "is not in the table"),
        ("licence: MIT\ncomercial_use: false\n", "'comercial_use': Extra inputs are not permitted"),
        ("licence: MIT\nuser_threshold: -5\n", "'user_threshold': Input should be greater than 0"),
        ("commercial_use: false\n", "'licence': Field required"),
    ],
)
def test_a_bad_sidecar_names_the_file_and_the_key(tmp_path, text, expected):
    data = sidecar(tmp_path / "d.jsonl", text)
    with pytest.raises(LicenceError, match=expected) as refused:
        data_terms(str(data))
    assert str(refused.value).startswith(f"{data}.licence.yaml: ")


@pytest.mark.engine  # python -m training sft in a subprocess
def test_the_cli_refuses_before_anything_is_written(tmp_path, ichikara, tiny_model):
    out = tmp_path / "adapter"
    command = [sys.executable, "-m", "training", "sft", "--base", str(tiny_model), "--data", str(ichikara),
               "--out", str(out), "--intended-use", "commercial"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # (bitsandbytes logs too)
    assert len(errors) == 1 and "allows no commercial use" in errors[0] and "no licence declared" in errors[0]
    assert not out.exists() and not out.with_name("adapter.partial").exists()
