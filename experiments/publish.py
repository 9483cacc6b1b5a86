"""Copy a run's table and figures into ``results/<name>/`` and refresh the README block that shows them.

    python experiments/publish.py compare_baselines runs/compare_baselines/<time> [--command "..."]

The README holds a block per result between ``<!-- results:<name> -->`` and
``<!-- /results:<name> -->``; this rewrites that block from the run's files, so
no number in the README is typed by hand.
"""
from __future__ import annotations

import argparse
import platform
import re
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    import os
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
    raise SystemExit(f"no heading containing {heading!r}")


def publish(name: str, run_dir: Path, command: str | None, figures: list[str], tables: list[str],
            sections: list[str] | None = None, wall: str | None = None, root: Path = ROOT) -> str:
    dest = root / "results" / name
    dest.mkdir(parents=True, exist_ok=True)
    parts = []
    if command:
        took = f" in {wall}" if wall else ""
        parts.append(f"Made by `{command}` on {machine()}{took}.\n")
    for t in tables:
        src = run_dir / t
        if not src.exists():
            raise SystemExit(f"{src} does not exist")
        shutil.copy(src, dest / src.name)
        if sections:  # only these sections inline; the whole file is linked
            parts.extend(section(src.read_text(), h) + "\n" for h in sections)
            parts.append(f"(Full table: [`results/{name}/{src.name}`](results/{name}/{src.name}).)\n")
        else:
            parts.append(demote_headings(src.read_text()).strip() + "\n")
    for f in figures:
        for src in sorted(run_dir.glob(f)):
            shutil.copy(src, dest / src.name)
            parts.append(f"![{name}: {src.stem}](results/{name}/{src.name})\n")
    block = "\n".join(parts)
    readme = root / "README.md"
    text = readme.read_text()
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no block {start} ... {end}")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))
    return block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--command", help="the command that made the run (shown in the README)")
    ap.add_argument("--figures", nargs="*", default=["*.png"], help="globs of figures to copy")
    ap.add_argument("--tables", nargs="*", default=["table.md"], help="tables to copy and inline")
    ap.add_argument("--sections", nargs="*", help="inline only the sections of the tables whose headings contain these")
    ap.add_argument("--wall", help="how long the command took, e.g. '6 min'")
    args = ap.parse_args()
    print(publish(args.name, args.run_dir, args.command, args.figures, args.tables, args.sections, args.wall))


if __name__ == "__main__":
    main()
