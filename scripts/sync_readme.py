"""Paste the pipeline's generated markdown into README.md after a run, so README shows exactly what
the run produced: every block between ``<!-- BEGIN path -->`` and ``<!-- END path -->`` is replaced
by the file ``path`` (tests/test_readme.py checks they match).

    python scripts/sync_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- BEGIN (?P<path>\S+) -->\n)(?:.*?\n)?(<!-- END (?P=path) -->)", re.S)


def sync(readme: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + (ROOT / m.group("path")).read_text().strip() + "\n" + m.group(3), readme)


def main() -> int:
    path = ROOT / "README.md"
    before = path.read_text()
    after = sync(before)
    path.write_text(after)
    print(f"README.md: {len(BLOCK.findall(before))} generated blocks, {'updated' if after != before else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
