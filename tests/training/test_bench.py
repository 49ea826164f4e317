"""The benchmark rewrites only its own `## Training` section of BENCHMARKS.md."""

from __future__ import annotations

from training.bench import render_section, write_section


def test_training_section_is_replaced_and_others_kept(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving\n\nserving numbers\n\n## Training\n\nold figures\n\n## Later\n\nkept\n")
    results = {
        "trl-baseline": [{"tokens_per_s": 100.0, "peak_rss_mib": 900.0, "tokens": 1000, "runtime_s": 10.0},
                         {"tokens_per_s": 50.0, "peak_rss_mib": 910.0, "tokens": 1000, "runtime_s": 20.0}],
        "ours-lora": [{"tokens_per_s": 150.0, "peak_rss_mib": 800.0, "tokens": 1000, "runtime_s": 6.0},
                      {"tokens_per_s": 70.0, "peak_rss_mib": 790.0, "tokens": 1000, "runtime_s": 14.0}],
    }  # fmt: skip
    write_section(render_section(results, steps=4, batch=8, planned={"trl-baseline": 1.5, "ours-lora": 1.25}), path)
    text = path.read_text()
    assert "serving numbers" in text and "## Later\n\nkept" in text and "old figures" not in text
    assert "| ours-lora | 110 | 1.45 | 1.50, 1.40 | 800 | 1.25 | 1000 |" in text  # ratios per round, then median
    assert text.count("## Training") == 1


def test_section_is_appended_when_missing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving\n\nx\n")
    write_section("## Training\n\nnew\n", path)
    assert path.read_text() == "# Benchmarks\n\n## Serving\n\nx\n\n## Training\n\nnew\n"
