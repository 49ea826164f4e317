"""The benchmark rewrites only its own `## Training` section of BENCHMARKS.md."""

from __future__ import annotations

from training.bench import render_section, write_section


def test_training_section_is_replaced_and_others_kept(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving\n\nserving numbers\n\n## Training\n\nold\n\n## Later\n\nkept\n")
    results = {
        "trl-baseline": {"tokens_per_s": 100.0, "peak_rss_mib": 900.0, "tokens": 1000, "runtime_s": 10.0},
        "ours-lora": {"tokens_per_s": 150.0, "peak_rss_mib": 800.0, "tokens": 900, "runtime_s": 6.0},
    }
    write_section(render_section(results, steps=4, batch=8), path)
    text = path.read_text()
    assert "serving numbers" in text and "## Later\n\nkept" in text and "old" not in text
    assert "| ours-lora | 150 | 1.50 | 800 | 900 | 6.0 |" in text
    assert text.count("## Training") == 1


def test_section_is_appended_when_missing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving\n\nx\n")
    write_section("## Training\n\nnew\n", path)
    assert path.read_text() == "# Benchmarks\n\n## Serving\n\nx\n\n## Training\n\nnew\n"
