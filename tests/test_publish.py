"""learned_opt.evaluation.publish: a report's block is rewritten from a run's files, wherever the block is, and
nothing else changes."""
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
    with pytest.raises(ValueError, match="must be in exactly one document; found in: none"):
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


def test_a_block_in_a_report_under_docs_links_relative_to_that_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.md").write_text("## Ranking\n\n| r |\n|---|\n| 2 |\n")
    (run / "scores.png").write_bytes(b"png")
    (tmp_path / "README.md").write_text("| [demo](docs/lecture/demo.md) | 0.9 |\n")
    report = tmp_path / "docs" / "lecture" / "demo.md"
    report.parent.mkdir(parents=True)
    report.write_text("# Demo\n\n<!-- results:demo -->\n<!-- /results:demo -->\n")
    publish.publish("demo", run, "python x.py", ["*.png"], ["summary.md"], sections=["Ranking"], root=tmp_path)
    text = report.read_text()
    assert "![demo: scores](../../results/demo/scores.png)" in text
    assert "(Full table: [`results/demo/summary.md`](../../results/demo/summary.md).)" in text
    assert (report.parent / "../../results/demo/scores.png").resolve().read_bytes() == b"png"  # the link resolves
    assert (tmp_path / "README.md").read_text() == "| [demo](docs/lecture/demo.md) | 0.9 |\n"


def test_a_block_held_by_two_documents_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "table.md").write_text("| a |\n")
    block = "<!-- results:demo -->\nold\n<!-- /results:demo -->\n"
    (tmp_path / "README.md").write_text(block)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "demo.md").write_text(block)
    with pytest.raises(ValueError, match="found in: README.md, docs/demo.md"):
        publish.publish("demo", run, None, [], ["table.md"], root=tmp_path)
    assert not (tmp_path / "results").exists() and (tmp_path / "docs" / "demo.md").read_text() == block
