"""llm-jp-eval v1.3.0 metrics: char_f1 equals fuzzywuzzy + python-Levenshtein on every pair tried, the others
equal hand-computed values or sacrebleu/scipy called the way llm-jp-eval calls them, and `eval score` files
round-trip while every bad line is reported with its file, line and field.

fuzzywuzzy and python-Levenshtein are test-only dependencies: they are the reference implementation the
published llm-jp-eval numbers came from, and nothing under training/ imports them."""

from __future__ import annotations

import argparse
import json
import random
import string
import unicodedata
import warnings
from pathlib import Path

import pytest
from fuzzywuzzy import fuzz
from fuzzywuzzy.StringMatcher import StringMatcher
from sacrebleu.metrics import BLEU
from scipy.stats import pearsonr, spearmanr

from training.errors import ConfigError, DataError
from training.evaluation.metrics import (
    METRICS,
    answer_of,
    bleu_en,
    bleu_ja,
    char_f1,
    exact_match,
    metric_named,
    parse_float,
    reference_of,
    score_item,
    set_f1,
)
from training.evaluation.score_pairs import add_score_arguments, score_file

# --- char_f1 parity with fuzzywuzzy ------------------------------------------------------------------------


def reference_char_f1(prediction: str, reference: str) -> float:
    """What llm-jp-eval v1.3.0 computes: `fuzz.token_sort_ratio(y_pred, y_true) / 100.0`."""
    return fuzz.token_sort_ratio(prediction, reference) / 100.0


def test_reference_implementation_uses_python_levenshtein():
    # Without python-Levenshtein, fuzzywuzzy silently falls back to difflib, whose ratio differs.
    assert fuzz.SequenceMatcher is StringMatcher


EDGE_CASES = [
    ("", ""),
    ("", "東京"),
    ("東京", ""),
    ("   ", ""),
    ("\u3000\t\n", " "),
    ("!!!", "???"),
    ("!!!", ""),
    ("、。「」", "東京"),
    ("YES", "yes"),
    ("Yes.", "yes"),
    ("１２３", "123"),
    ("ＡＢＣ", "abc"),
    ("é", ""),
    ("éàü", "ÀÉÎ"),
    ("ÀÉÎ", "xyz"),
    ("café", "cafe"),
    ("naïve résumé", "naive resume"),
    ("ĀāĂ", "āāă"),
    ("a_b", "a b"),
    ("東京 タワー", "タワー 東京"),
    ("東京タワー", "東京　タワー"),
    ("ΑΣ Β", "ας β"),
    ("İ", "i"),
    ("ß", "SS"),
    ("ﬁ", "fi"),
    ("½ ² µ", "1 2"),
    ("abc", "abd"),
    ("a b c d e f g h", "h g f e d c b a"),
    ("1,000", "1000"),
    ("富士山です。", "富士山"),
]


@pytest.mark.parametrize(("prediction", "reference"), EDGE_CASES)
def test_char_f1_matches_fuzzywuzzy_on_edge_cases(prediction, reference):
    assert char_f1(prediction, reference) == reference_char_f1(prediction, reference)


def test_char_f1_edge_case_values_are_the_surprising_ones():
    assert char_f1("", "") == 1.0  # equal before empty: fuzzywuzzy's decorator order
    assert char_f1("!!!", "") == 1.0  # both process to nothing
    assert char_f1("é", "") == 1.0  # force_ascii deletes U+0080..U+00FF
    assert char_f1("", "東京") == 0.0
    assert char_f1("YES", "yes") == 1.0
    assert char_f1("abc", "abd") == 0.67  # round(66.67) / 100


def _chars(*ranges: tuple[int, int]) -> str:
    return "".join(chr(code) for start, end in ranges for code in range(start, end + 1))


POOLS = [
    _chars((0x3041, 0x3096)),  # hiragana
    _chars((0x30A1, 0x30FA), (0xFF66, 0xFF9D)),  # katakana, half-width katakana
    _chars((0x4E00, 0x4FFF)) + "日本東京都山川富士紫式部琵琶湖",  # kanji
    _chars((0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xFF10, 0xFF19)),  # full-width letters and digits
    string.ascii_letters + string.digits,
    _chars((0x00C0, 0x00FF)),  # accented Latin-1: deleted by force_ascii
    _chars((0x0100, 0x017F), (0x0391, 0x03C9)) + "İẞﬁ",  # beyond Latin-1, Greek (final sigma), odd lower-casing
    string.punctuation + "、。「」・！？（）＿ー…—·",
]
SEPARATORS = [" ", " ", " ", "\u3000", "\t", "\n", "\r\n", "\xa0", "", "、", "。", ", "]


def random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, 6)):
        pools = rng.sample(POOLS, rng.choice([1, 1, 2]))
        words.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 6))))
    return "".join(word + rng.choice(SEPARATORS) for word in words)


def related_text(rng: random.Random, text: str) -> str:
    """A variant sharing most of `text`, so that scores spread over the whole range instead of sitting near 0."""
    kind = rng.random()
    if kind < 0.1:
        return random_text(rng)
    if kind < 0.25:
        words = text.split()
        rng.shuffle(words)
        return rng.choice(SEPARATORS[:4]).join(words)
    if kind < 0.35:
        return text.swapcase()
    chars = list(text)
    for _ in range(rng.randint(1, max(1, len(chars) // 3))):
        position = rng.randrange(len(chars) + 1)
        action = rng.random()
        if action < 0.4 and position < len(chars):
            del chars[position]
        elif action < 0.7 and position < len(chars):
            chars[position] = rng.choice(rng.choice(POOLS))
        else:
            chars.insert(position, rng.choice(rng.choice(POOLS) + " \u3000\n"))
    return "".join(chars)


def random_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        text = random_text(rng)
        pairs.append((text, related_text(rng, text)) if rng.random() < 0.5 else (related_text(rng, text), text))
    return pairs


def test_char_f1_matches_fuzzywuzzy_on_20000_random_pairs():
    pairs = random_pairs(20_000, seed=15)
    pairs += [(unicodedata.normalize("NFKC", a), unicodedata.normalize("NFKC", b)) for a, b in pairs[:5000]]
    differences = [(a, b, char_f1(a, b), reference_char_f1(a, b)) for a, b in pairs]
    differences = [d for d in differences if d[2] != d[3]]
    assert differences == [], f"{len(differences)} differences, e.g. {differences[:5]}"
    # The pairs exercise the whole range, not just "unrelated" (0) and "identical" (1).
    scores = [reference_char_f1(a, b) for a, b in pairs[:20_000]]
    assert len(set(scores)) >= 90
    assert sum(0.2 < score < 0.95 for score in scores) > len(scores) / 2


# --- The other per-item metrics ----------------------------------------------------------------------------


def test_answer_of_is_the_first_paragraph_nfkc_unstripped():
    assert answer_of("東京です。\n\n理由は次の通りです。\n\n以上") == "東京です。"
    assert answer_of("ＡＢＣ１２３") == "ABC123"
    assert answer_of("ＡＢＣ\n１２３\n\n他") == "ABC\n123"  # single newlines stay (set_f1 reads them)
    assert answer_of(" 東京\n") == " 東京\n"  # v1.3.0 does not strip
    assert answer_of("\n\n東京") == ""  # an output that opens with a blank line is the empty answer
    assert answer_of("東京\r\n\r\n他") == "東京\r\n\r\n他"  # only "\n\n" splits
    assert answer_of(answer_of("a\n\nb")) == answer_of("a\n\nb")


def test_reference_of_is_nfkc_only():
    assert reference_of("ＡＢＣ１２３\n\n２") == "ABC123\n\n2"
    assert reference_of(" 東京 ") == " 東京 "


def test_score_item_extracts_and_normalises_like_llm_jp_eval():
    exact = metric_named("exact_match")
    assert score_item(exact, "ＡＢＣ\n\n説明", "ABC") == 1.0
    assert score_item(exact, "ABC", "ＡＢＣ") == 1.0
    assert score_item(exact, " ABC", "ABC") == 0.0


def test_exact_match():
    assert exact_match("東京", "東京") == 1.0
    assert exact_match("東京", "東京都") == 0.0
    assert exact_match("Yes", "yes") == 0.0
    assert exact_match("", "") == 1.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("a\nb", "a\nb", 1.0),
        ("b\na", "a\nb", 1.0),  # order does not matter
        (" a \nb\n", "a\nb\n", 1.0),  # lines are stripped; both have the empty last line
        ("a\nb", "a\nc", 0.5),  # p = 1/2, r = 1/2
        ("a", "a\nb\nc", 0.5),  # p = 1, r = 1/3: 2/3 / (4/3)
        ("a\na\nb", "a\nb\nc\nd", 2 * 1 * 0.5 / 1.5),  # duplicates collapse on the prediction side
        ("a\nb", "a\na\nb", 0.8),  # ...but not on the reference side: r = 2/3
        ("x", "a\nb", 0.0),
        ("", "", 1.0),  # one empty line each, and they match
        ("", "a", 0.0),
        ("a\n\nb", "a\nb", 2 * (2 / 3) * 1 / (2 / 3 + 1)),  # an empty predicted line is one more line
    ],
)
def test_set_f1_against_hand_computed_values(prediction, reference, expected):
    assert set_f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


PARSED = {"3.5": 3.5, "答えは4です": 4.0, "-3": 3.0, "1e5": 15.0, "2,5": 25.0, "": -2.0, "不明": -2.0, "1.2.3": -2.0}


@pytest.mark.parametrize(("text", "expected"), [*PARSED.items(), (".", -2.0), ("４", -2.0)])
def test_parse_float_is_llm_jp_eval_s(text, expected):
    # "４" is not [0-9] until NFKC makes it "4": answer_of runs before the metric, so predictions get that far.
    assert parse_float(text) == expected


# --- Correlations ------------------------------------------------------------------------------------------


def llm_jp_eval_correlation(function, predictions: list[str], references: list[str]) -> float:
    """v1.3.0: `pearsonr(list(map(float, y_trues)), list(map(parse_float, y_preds)))[0]`, NaN -> 0.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = function(list(map(float, references)), list(map(parse_float, predictions)))[0]
    return 0.0 if value != value else float(value)


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_correlations_match_scipy_called_as_llm_jp_eval_does(name):
    function = {"pearson": pearsonr, "spearman": spearmanr}[name]
    metric = METRICS[name]
    generated = ["類似度は3.2です", "4", "わかりません", "0.5", "２．５\n\n理由: 1", "5.0", "1"]
    references = ["3.0", "4.2", "1.0", "0.8", "2.4", "4.8", "１．２"]
    answers, golds = [answer_of(g) for g in generated], [reference_of(r) for r in references]
    values = [score_item(metric, g, r) for g, r in zip(generated, references, strict=True)]
    assert values[2] == -2.0  # unparseable prediction
    assert values[4] == 2.5  # NFKC before parse_float
    assert metric.aggregate(values, golds) == llm_jp_eval_correlation(function, answers, golds)
    assert metric.aggregate(values, references) == metric.aggregate(values, golds)  # raw references work too
    assert metric.aggregate(values, golds) > 0.5


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_correlations_are_zero_where_undefined(name):
    metric = METRICS[name]
    assert metric.aggregate([3.0, 3.0, 3.0], ["1", "2", "3"]) == 0.0  # constant predictions: NaN -> 0.0
    assert metric.aggregate([-2.0], ["4"]) == 0.0  # one item: scipy raises (pearson) or gives NaN
    with pytest.raises(ValueError, match="expected a number, got 'abc'"):
        metric.item("3", "abc")


def test_every_aggregate_works_on_one_item_and_rejects_none():
    for metric in METRICS.values():
        assert isinstance(metric.aggregate([1.0], ["1"]), float)
        with pytest.raises(ValueError, match="no items"):
            metric.aggregate([], [])
        with pytest.raises(ValueError, match="2 item values but 1 references"):
            metric.aggregate([1.0, 0.0], ["1"])


# --- BLEU --------------------------------------------------------------------------------------------------

BLEU_PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("abc", "a"),  # only as many characters as the shorter side are compared
    ("ab", "ba"),
    ("東京都に住んでいます。", "東京に住んでいます。"),
    ("今日は晴れ", "今日は雨"),
    ("x y z", "xyz"),
]


@pytest.mark.parametrize(("prediction", "reference"), BLEU_PAIRS)
def test_bleu_en_is_sacrebleu_called_as_llm_jp_eval_does(prediction, reference):
    # v1.3.0: BLEU(effective_order=True).corpus_score(y_preds[i], [y_trues[i]]).score, strings and all.
    expected = BLEU(effective_order=True).corpus_score(prediction, [reference]).score
    assert bleu_en(prediction, reference) == expected


def test_bleu_compares_characters_position_by_position():
    assert bleu_en("abc", "a") == pytest.approx(100.0)
    assert bleu_en("ab", "ba") == 0.0
    assert bleu_en("abc", "abd") == pytest.approx(100 * 2 / 3)
    assert bleu_ja("東京都", "東京府") == pytest.approx(100 * 2 / 3)


def test_bleu_empty_side_scores_zero_where_llm_jp_eval_crashes():
    with pytest.raises(IndexError):
        BLEU(effective_order=True).corpus_score("", ["a"])
    assert bleu_en("", "a") == bleu_en("a", "") == bleu_en("", "") == 0.0
    assert bleu_ja("", "東京") == bleu_ja("東京", "") == 0.0


@pytest.mark.parametrize(("prediction", "reference"), BLEU_PAIRS)
def test_bleu_ja_equals_any_tokenizer_on_one_character_segments(prediction, reference):
    # On one-character segments 13a (usable without MeCab) and ja-mecab agree; bleu_ja must give the same.
    assert bleu_ja(prediction, reference) == BLEU(effective_order=True).corpus_score(prediction, [reference]).score


@pytest.mark.parametrize(("prediction", "reference"), [*BLEU_PAIRS, ("aÐb", "aÐb")])
def test_bleu_ja_matches_sacrebleu_with_mecab(prediction, reference):
    expected = BLEU(trg_lang="ja", effective_order=True).corpus_score(prediction, [reference]).score
    assert bleu_ja(prediction, reference) == expected


# --- Registry ----------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_metric():
    assert list(METRICS) == ["exact_match", "char_f1", "set_f1", "pearson", "spearman", "bleu_en", "bleu_ja"]
    assert all(metric.name == name for name, metric in METRICS.items())
    with pytest.raises(ConfigError, match=r"unknown metric 'rouge'; known metrics: exact_match, char_f1, .*bleu_ja"):
        metric_named("rouge")


# --- score_file and the command ----------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pair(prediction, reference) -> str:
    return json.dumps({"prediction": prediction, "reference": reference}, ensure_ascii=False)


def test_score_file_round_trip(tmp_path):
    pairs = write_lines(
        tmp_path / "pairs.jsonl",
        [pair("東京\n\n東京は日本の首都です。", "東京"), "", pair("ＡＢＣ", "ABC"), pair(" 大阪", "京都")],
    )
    out = tmp_path / "scores.jsonl"
    scores = score_file(pairs, out, ["exact_match", "char_f1", "set_f1"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["line"] for row in rows] == [1, 3, 4]  # the blank line is skipped, numbering is the file's
    assert [row["answer"] for row in rows] == ["東京", "ABC", " 大阪"]
    assert [row["exact_match"] for row in rows] == [1.0, 1.0, 0.0]
    assert [row["char_f1"] for row in rows] == [1.0, 1.0, char_f1(" 大阪", "京都")]
    assert scores.pairs == 3
    assert scores.aggregates["exact_match"] == pytest.approx(2 / 3)
    assert scores.aggregates["set_f1"] == pytest.approx(2 / 3)
    assert list(scores.aggregates) == ["exact_match", "char_f1", "set_f1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scores.jsonl"]  # no temporary file left


def test_score_command_parses_validates_and_prints(tmp_path, capsys):
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair("3", "3.0"), pair("1", "1.5"), pair("2", "1.0")])
    parser = argparse.ArgumentParser(prog="score")
    add_score_arguments(parser)
    args = parser.parse_args(["--metrics", "pearson, exact_match", "--in", str(pairs), "--out", str(tmp_path / "o")])
    assert args.metrics == ["pearson", "exact_match"]
    args.handler(args)
    printed = capsys.readouterr().out
    assert "scored 3 pairs" in printed
    assert f"\npearson: {pearsonr([3.0, 1.5, 1.0], [3.0, 1.0, 2.0])[0]:.4f}\nexact_match: 0.0000\n" in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["--metrics", "exact_match,rouge", "--in", "a", "--out", "b"])
    assert "unknown metric 'rouge'; known metrics: exact_match" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([pair("a", "a"), '{"prediction": "a"}'], "line 2: field 'reference': missing"),
        ([pair("a", "a"), "", '{"reference": "a"}'], "line 3: field 'prediction': missing"),
        ([pair("a", "a"), pair("a", "a"), pair("a", None)], "line 3: field 'reference': expected a string, got null"),
        ([pair(["a"], "a")], "line 1: field 'prediction': expected a string, got an array"),
        ([pair("a", 3)], "line 1: field 'reference': expected a string, got a number"),
        ([pair("a", "a"), '{"prediction": "a", "reference": '], "line 2: invalid JSON: Expecting value (column 34)"),
        (['["a", "a"]'], "line 1: expected a JSON object with 'prediction' and 'reference', got an array"),
    ],
)
def test_score_file_names_file_line_and_field(tmp_path, lines, message):
    pairs = write_lines(tmp_path / "pairs.jsonl", lines)
    out = tmp_path / "scores.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        score_file(pairs, out, ["exact_match"])
    assert str(error.value) == f"{pairs}: {message}"
    assert out.read_text(encoding="utf-8") == "previous\n"  # a failed run leaves the old output untouched


def test_score_file_rejects_non_numeric_reference_for_correlations(tmp_path):
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair("3", "3"), pair("4", "four")])
    with pytest.raises(DataError) as error:
        score_file(pairs, tmp_path / "scores.jsonl", ["exact_match", "spearman"])
    assert str(error.value) == f"{pairs}: line 2: field 'reference': spearman: expected a number, got 'four'"
    assert not (tmp_path / "scores.jsonl").exists()


def test_score_file_rejects_empty_and_undecodable_files_and_unknown_metrics(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl: no pairs to score"):
        score_file(empty, tmp_path / "out.jsonl", ["exact_match"])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(pair("a", "a").encode() + b"\n" + '{"prediction": "é", "reference": "e"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl: line 2: not valid UTF-8 \(byte 16"):
        score_file(latin1, tmp_path / "out.jsonl", ["exact_match"])
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        score_file(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", ["exact_match"])
    good = write_lines(tmp_path / "good.jsonl", [pair("a", "a")])
    with pytest.raises(ConfigError, match=r"unknown metric 'bleu'; known metrics: exact_match, char_f1"):
        score_file(good, tmp_path / "out.jsonl", ["exact_match", "bleu"])
    with pytest.raises(ConfigError, match="the output would replace the input"):
        score_file(good, good, ["exact_match"])
    with pytest.raises(ConfigError, match="does not exist"):
        score_file(good, tmp_path / "no-such-folder" / "out.jsonl", ["exact_match"])
    assert not (tmp_path / "out.jsonl").exists()


def test_score_file_writes_through_a_rename_and_cleans_up_when_it_fails(tmp_path, monkeypatch):
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair("a", "a")])
    out = tmp_path / "scores.jsonl"
    out.write_text("previous\n", encoding="utf-8")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr("training.evaluation.atomic_files.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        score_file(pairs, out, ["exact_match"])
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scores.jsonl"]
