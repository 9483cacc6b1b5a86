"""learned_opt.evaluation.publish: a README block is rewritten from a run's files, and nothing else changes."""
from __future__ import annotations

import pytest

from learned_opt.evaluation import publish


def test_block_is_replaced_with_tables_sections_and_figures(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.md").write_text("intro\n\n### Task a\n\n| x |\n|---|\n| 1 |\n\n### Ranking by loss\n\n| r |\n|---|\n| 2 |\n")
    (run / "curves.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:demo -->\nstale 0.123\n<!-- /results:demo -->\nbottom\n")
    publish.publish("demo", run, "python x.py", ["*.png"], ["summary.md"], sections=["Ranking"], wall="2 min",
                    root=tmp_path)
    text = readme.read_text()
    assert text.startswith("top\n<!-- results:demo -->\n") and text.endswith("<!-- /results:demo -->\nbottom\n")
    assert "stale" not in text and "| r |" in text and "| x |" not in text  # only the asked-for section inline
    assert "Made by `python x.py`" in text and "in 2 min" in text
    assert "![demo: curves](results/demo/curves.png)" in text
    assert "\n### " not in text.split("<!-- results:demo -->")[1]  # inlined headings are demoted
    assert (tmp_path / "results" / "demo" / "summary.md").exists() and (tmp_path / "results" / "demo" / "curves.png").exists()


def test_missing_block_or_table_fails_clearly(tmp_path):
    (tmp_path / "README.md").write_text("no markers\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "table.md").write_text("## Claims\n| a |\n")
    with pytest.raises(ValueError, match="no block"):
        publish.publish("demo", run, None, [], ["table.md"], root=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        publish.publish("demo", run, None, [], ["missing.md"], root=tmp_path)


def test_whole_tables_are_inlined_with_headings_demoted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "table.md").write_text("intro\n\n## Claims (2/2 hold)\n\n- ok\n")
    (tmp_path / "README.md").write_text("<!-- results:demo -->\n<!-- /results:demo -->\n")
    publish.publish("demo", run, None, [], ["table.md"], root=tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "**Claims (2/2 hold)**" in text and "## Claims" not in text and "- ok" in text
