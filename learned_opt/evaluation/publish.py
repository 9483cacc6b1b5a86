"""Published results: a run's tables and figures copied into ``results/<name>/`` and shown in a report.

A report (a markdown file under ``docs/``, or the README) holds a block per result between
``<!-- results:<name> -->`` and ``<!-- /results:<name> -->``; :func:`publish` finds the one document that
holds the block and rewrites it from the run's files, with links relative to that document
(``experiments/publish.py`` is its command line), so no number in a report is typed by hand.
"""
from __future__ import annotations

import os
import platform
import posixpath
import re
import shutil
from pathlib import Path

import torch


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}"


def demote_headings(md: str) -> str:
    """Headings of an inlined table become bold lines, so they do not break the README's outline."""
    return re.sub(r"^#+\s*(.*?)\s*$", r"**\1**", md, flags=re.M)


def section(md: str, heading: str) -> str:
    """The markdown section whose heading line contains ``heading``, up to the next heading of its level."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and heading in line:
            level = len(line) - len(line.lstrip("#"))
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].startswith("#") and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
            return f"**{line.lstrip('#').strip()}**\n\n" + demote_headings("\n".join(lines[i + 1:end])).strip()
    raise ValueError(f"no heading containing {heading!r}")


def documents(root: Path) -> list[Path]:
    """The documents that may hold result blocks: the README and every markdown file under ``docs/``."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def find_block(name: str, root: Path) -> Path:
    """The one document under ``root`` that holds the block ``<!-- results:<name> -->``; ``ValueError`` when
    none or several do."""
    start = f"<!-- results:{name} -->"
    holders = [d for d in documents(root) if d.exists() and start in d.read_text()]
    if len(holders) != 1:
        where = ", ".join(str(d.relative_to(root)) for d in holders) or "none of README.md, docs/**/*.md"
        raise ValueError(f"the block {start} ... <!-- /results:{name} --> must be in exactly one document; "
                         f"found in: {where}")
    return holders[0]


def publish(name: str, run_dir: Path, command: str | None, figures: list[str], tables: list[str],
            sections: list[str] | None = None, wall: str | None = None, *, root: Path) -> str:
    """Copy ``tables`` and the ``figures`` globs of ``run_dir`` into ``root/results/<name>/`` and rewrite the
    block ``<!-- results:<name> -->`` ... ``<!-- /results:<name> -->`` of the document that holds it (the
    README or a report under ``root/docs/``) from them (only the ``sections`` of the tables whose headings
    contain these, when given), linking the copies relative to that document; returns the block.
    """
    missing = [str(run_dir / t) for t in tables if not (run_dir / t).exists()]
    if missing:  # before anything is copied or written
        raise FileNotFoundError(f"{', '.join(missing)} does not exist")
    doc = find_block(name, root)
    dest = root / "results" / name
    link = posixpath.relpath(f"results/{name}", doc.parent.relative_to(root).as_posix() or ".")
    dest.mkdir(parents=True, exist_ok=True)
    parts = []
    if command:
        took = f" in {wall}" if wall else ""
        parts.append(f"Made by `{command}` on {machine()}{took}.\n")
    for t in tables:
        src = run_dir / t
        shutil.copy(src, dest / src.name)
        if sections:  # only these sections inline; the whole file is linked
            parts.extend(section(src.read_text(), h) + "\n" for h in sections)
            parts.append(f"(Full table: [`results/{name}/{src.name}`]({link}/{src.name}).)\n")
        else:
            parts.append(demote_headings(src.read_text()).strip() + "\n")
    for f in figures:
        for src in sorted(run_dir.glob(f)):
            shutil.copy(src, dest / src.name)
            parts.append(f"![{name}: {src.stem}]({link}/{src.name})\n")
    block = "\n".join(parts)
    text = doc.read_text()
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{doc} has the start of the block {start} but not its end {end}")
    doc.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))
    return block
