"""Paste the pipeline's generated markdown into README.md and the docs pages (docs/*.md) after a run, so
they show exactly what the run produced: every block between ``<!-- BEGIN path -->`` and
``<!-- END path -->`` is replaced by the file ``path``, relative to the repository root, and every
``dvc plots show roc_msp_tin_crop roc_<detector>_tin_crop`` example names the detector the package stage
chose (metrics/package.json). tests/test_readme.py checks they match.

    python scripts/sync_readme.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- BEGIN (?P<path>\S+) -->\n)(?:.*?\n)?(<!-- END (?P=path) -->)", re.S)
PLOTS_EXAMPLE = re.compile(r"(dvc plots show roc_msp_tin_crop )roc_\w+?_tin_crop")


def packaged_detector() -> str:
    """The detector the artifact carries, as the package stage recorded it."""
    return json.loads((ROOT / "metrics/package.json").read_text())["detector"]


def sync(readme: str) -> str:
    """``readme`` with every generated block holding its file's current content, and its ROC plots example
    showing MSP beside the packaged detector."""
    text = BLOCK.sub(lambda m: m.group(1) + (ROOT / m.group("path")).read_text().strip() + "\n" + m.group(3), readme)
    return PLOTS_EXAMPLE.sub(lambda m: f"{m.group(1)}roc_{packaged_detector()}_tin_crop", text)


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
