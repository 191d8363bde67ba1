"""The one markdown-table builder: every table the reports, the sweep and the review write comes from
here, so they share one layout (README's tables are these files, byte for byte); and the one way they name
the machine a number was measured on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def cpu_label(cpu: Mapping[str, Any]) -> str:
    """A recorded CPU (:func:`edgeml.bench.environment.cpu_info`) as a reader compares machines: the model,
    then the ISA flags it has, e.g. ``AMD EPYC 9R14 (avx2, fma, avx512_vnni)``."""
    return f"{cpu['model']} ({', '.join(flag for flag, present in cpu['isa'].items() if present)})"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], max_rows: int | None = None) -> str:
    """A markdown table of already formatted cells, without a trailing newline. With ``max_rows``, the
    rows past it are counted in a note below the table, not shown (a pull-request comment has a size limit).
    A blank header cell, over a column of row names, is written ``| |``."""
    rows = list(rows)
    shown = rows if max_rows is None else rows[:max_rows]
    lines = ["|" + "".join(f" {cell} |" if cell else " |" for cell in header), "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in shown]
    if len(rows) > len(shown):
        lines.append(f"\n… {len(rows) - len(shown)} more rows not shown.")
    return "\n".join(lines)
