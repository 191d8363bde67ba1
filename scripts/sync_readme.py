"""Paste the pipeline's generated markdown into README.md and the docs pages (docs/*.md) after a run, so
they show exactly what the run produced: every block between ``<!-- BEGIN path -->`` and
``<!-- END path -->`` is replaced by the file ``path``, relative to the repository root
(tests/test_readme.py checks they match).

    python scripts/sync_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- BEGIN (?P<path>\S+) -->\n)(?:.*?\n)?(<!-- END (?P=path) -->)", re.S)


def sync(readme: str) -> str:
    """``readme`` with every generated block holding its file's current content."""
    return BLOCK.sub(lambda m: m.group(1) + (ROOT / m.group("path")).read_text().strip() + "\n" + m.group(3), readme)


def pages(root: Path = ROOT) -> list[Path]:
    """The files whose generated blocks are kept in sync: README.md and every docs page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main() -> int:
    for path in pages():
        before = path.read_text()
        after = sync(before)
        if after != before:
            path.write_text(after)
        blocks = [m.group("path") for m in BLOCK.finditer(before)]
        print(f"{path.relative_to(ROOT)}: {len(blocks)} generated blocks"
              f"{' (' + ', '.join(blocks) + ')' if blocks else ''}, {'updated' if after != before else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
