"""`edgeml review --base REV`: one markdown report of what a change does, for a pull request.

Base is a git revision; head is the working tree (what `dvc repro` just wrote) or another revision.
Every number comes from the committed metrics files of each side (`git show REV:path`), so a side
that lacks a file (older than it, or a stage that did not run) is reported as missing, not an error.
The report stays under GitHub's comment limit (65,536 characters): long tables are cut with a note.
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from edgeml.io import write_text
from edgeml.reporting.markdown import table
from edgeml.sweep import SWEEP_GOALS, params_recipe

HEADLINE = {"quality": "metrics/summary.json", "timing": "metrics/timing.json"}  # flat {name: number} files


TABLES = "metrics/tables.json"


OOD = "metrics/ood.json"


SWEEP = "metrics/quant_sweep.json"


PARAMS = "params.yaml"


PACKAGE = "metrics/package.json"  # names the detector the deployable artifact carries


ROC_CSV = "plots/ood/roc/{model}/{detector}_{ood_set}.csv"


TABLE2 = "msp/tin_crop"  # the paper's Table 2: MSP, CIFAR-10 vs TinyImageNet (crop)


ROC_SET = "tin_crop"


MODELS = ("fp32", "int8")


MAX_BYTES = 60_000


MAX_ROWS = 80  # per table; the rest is counted, not shown


MAX_CELL = 80  # characters of one params value


# Goals, key of a judged row -> (operator, threshold): the sweep's goals, judged on validation numbers, never on
# test numbers: the evaluate stage's judgement of the recipe params `quantize` holds (sweep recipe or not) and the
# bench stage's speed-up; for a revision from before that judgement, the sweep row of its recipe.
GOALS: dict[str, tuple[str, float]] = {
    "top1_drop_points": ("<=", SWEEP_GOALS["top1_drop_points"]),
    "max_auroc_drop_points": ("<=", SWEEP_GOALS["auroc_drop_points"]),
    "size_ratio": (">=", SWEEP_GOALS["size_ratio"]),
    "speedup": (">=", SWEEP_GOALS["speedup"]),
}
JUDGED = "metrics/evaluate.json"  # "validation": the quantize recipe judged as the sweep judges one
SPEED = "metrics/bench.json"  # "compute" -> "int8_speedup_vs_fastest_fp32": batch 1, the INT8 file vs the fastest FP32 path


_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class ReviewError(Exception):
    """A revision that git cannot resolve, or an output path that cannot be written."""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a git revision, or the working tree (rev None)."""

    root: Path
    rev: str | None

    @property
    def label(self) -> str:
        return self.rev or "working tree"

    def read(self, path: str) -> str | None:
        """The file's text on this side, None where it does not exist there."""
        if self.rev is None:
            file = self.root / path
            return file.read_text() if file.is_file() else None
        done = subprocess.run(["git", "-C", str(self.root), "show", f"{self.rev}:{path}"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    def json(self, path: str) -> Any:
        text = self.read(path)
        return None if text is None else json.loads(text)

    def yaml(self, path: str) -> Any:
        import yaml  # pyyaml: not in the runtime install that `edgeml predict` needs

        text = self.read(path)
        return None if text is None else yaml.safe_load(text)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode:
        raise ReviewError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(root: Path, rev: str) -> str:
    """Check that git knows the revision; in CI a shallow checkout does not (use fetch-depth: 0)."""
    try:
        return _git(root, "rev-parse", "--short", "--verify", f"{rev}^{{commit}}")
    except ReviewError as exc:
        raise ReviewError(f"unknown revision {rev!r}: fetch it (in CI: actions/checkout with fetch-depth: 0). {exc}") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def number(value: Any) -> float | None:
    """A metric's value if it is a real number (not a bool, a string or null), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value: Any) -> str:
    x = number(value)
    if x is None:
        return "—" if value is None or value == "" else str(value).split(":")[0]
    return _digits(x)


def _digits(x: float, sign: str = "") -> str:
    """Two decimals from 1 up, three significant digits below (latencies in ms, drops in points)."""
    if abs(x) >= 1000:
        return f"{x:{sign},.0f}"
    return f"{x:{sign}.2f}" if abs(x) >= 1 else f"{x:{sign}.3g}"


def delta(base: Any, head: Any) -> str:
    b, h = number(base), number(head)
    if b is None or h is None:
        return ""
    if h == b:
        return "0"
    relative = f" ({(h - b) / abs(b):+.1%})" if b else ""
    return _digits(h - b, "+") + relative


def meets(key: str, value: Any) -> bool | None:
    """Whether a headline value meets its goal; None without a goal or a value."""
    x = number(value)
    if key not in GOALS or x is None:
        return None
    op, threshold = GOALS[key]
    return _OPS[op](x, threshold)


def _mark(ok: bool | None) -> str:
    return {True: " ✅", False: " ❌", None: ""}[ok]


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    text = text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def data_source_changes(base: Side, head: Side, path: str = "data/sources.json") -> str:
    """A loud note naming each dataset fetched from another source (or as another file) on the two
    sides, "" when none: such a change moves the metrics by itself, whatever the code change does."""
    old, new = (side.json(path) or {} for side in (base, head))
    lines = []
    for name in [n for n in new if n in old]:
        b, h = old[name], new[name]
        if b.get("source") != h.get("source"):
            lines.append(f"> - `{name}`: `{b.get('source')}` → `{h.get('source')}`")
        elif b.get("sha256") != h.get("sha256"):
            lines.append(f"> - `{name}`: another file from `{h.get('source')}` "
                         f"(sha256 `{str(b.get('sha256'))[:12]}…` → `{str(h.get('sha256'))[:12]}…`)")
    if not lines:
        return ""
    return "\n".join([f"> ⚠️ **Data source changed** (`{path}`): metrics can move for this reason alone (the "
                      "mirror's CIFAR-10 is a JPEG re-encoding, the official tarball has the original pixels).",
                      ">", *lines]) + "\n"


def params_section(base: Side, head: Side) -> str:
    old, new = (flatten(side.yaml(PARAMS) or {}) for side in (base, head))
    changed = [key for key in dict.fromkeys([*old, *new]) if old.get(key, ...) != new.get(key, ...)]
    if not changed:
        return "No parameter changed."
    missing = "*(absent)*"
    rows = [[f"`{k}`", _cell(old[k]) if k in old else missing, _cell(new[k]) if k in new else missing] for k in changed]
    return table(["parameter", "base", "head"], rows, MAX_ROWS)


def quantize_row(side: Side) -> tuple[str | None, dict]:
    """The sweep recipe that this side's params `quantize` is, and its row of validation numbers
    ((None, {}) when the sweep has no such recipe)."""
    import dataclasses

    from edgeml.params import QuantizeParams  # pyyaml, as Side.yaml

    sweep, params = side.json(SWEEP) or {}, side.yaml(PARAMS) or {}
    if not sweep.get("recipes"):
        return None, {}
    # the recipe the quantize stage ran, its auto values resolved as the sweep's records are; else params' own
    ran = (side.json("metrics/quantize.json") or {}).get("recipe")
    name = params_recipe(ran or {**dataclasses.asdict(QuantizeParams()), **(params.get("quantize") or {})}, sweep)
    return name, sweep["recipes"][name] if name else {}


def judged_row(side: Side) -> tuple[str, dict]:
    """Where this side's goal numbers come from, and the numbers: the evaluate stage's validation judgement
    of its quantize recipe with the bench stage's speed-up; else (an older revision) its sweep row."""
    own = (side.json(JUDGED) or {}).get("validation")
    if own:
        speedup = ((side.json(SPEED) or {}).get("compute") or {}).get("int8_speedup_vs_fastest_fp32")
        return f"`{JUDGED}` and `{SPEED}`", {**own, "speedup": speedup}
    name, row = quantize_row(side)
    return (f"sweep row `{name}` (`{SWEEP}`)" if name else "nothing: no judgement and no sweep row"), row


def _goal_cell(key: str, value: Any) -> str:
    return "not measured" if number(value) is None else fmt(value) + _mark(meets(key, value))


def goals_section(base: Side, head: Side) -> str:
    """Which goals each side meets, on the validation numbers of its own quantize recipe; loud when the
    head's params `quantize` is not the head sweep's best recipe."""
    (b_source, b_row), (h_source, h_row) = judged_row(base), judged_row(head)
    rows = [[f"`{key}`", _goal_cell(key, b_row.get(key)), _goal_cell(key, h_row.get(key)), delta(b_row.get(key), h_row.get(key)),
             f"{op} {threshold:g}"] for key, (op, threshold) in GOALS.items()]
    met = {side: [k for k in GOALS if meets(k, row.get(k))] for side, row in (("base", b_row), ("head", h_row))}
    unmeasured = {side: [k for k in GOALS if number(row.get(k)) is None] for side, row in (("base", b_row), ("head", h_row))}
    lost = [k for k in met["base"] if k not in met["head"] and k not in unmeasured["head"]]
    won = [k for k in met["head"] if k not in met["base"]]
    parts = [
        f"Validation numbers of each side's quantize recipe: base from {b_source}, head from {h_source}. "
        f"Goals met: base {len(met['base'])}/{len(GOALS)}, head {len(met['head'])}/{len(GOALS)}"
        + (f"; **no longer met: {', '.join(lost)}**" if lost else "")
        + (f"; newly met: {', '.join(won)}" if won else "")
        + (f"; not measured on head: {', '.join(unmeasured['head'])}" if unmeasured["head"] else "") + ".",
        "",
        table(["metric", "base", "head", "change", "goal"], rows, MAX_ROWS),
    ]
    best = (head.json(SWEEP) or {}).get("best")
    h_name, _ = quantize_row(head)
    if best and h_name != best:
        what = f"recipe `{h_name}`" if h_name else "no sweep recipe"
        parts += ["", f"> ⚠️ **params.yaml `quantize` is {what}, but the sweep's best is `{best}`**: the headline "
                      f"metrics below are not those of the recipe the sweep chose."]
    return "\n".join(parts)


def metrics_section(base: Side, head: Side) -> str:
    """One table per headline file (quality, then the noisy timings): test numbers, shown and not gated."""
    parts, notes = [], []
    for kind, path in HEADLINE.items():
        sides = [side.json(path) for side in (base, head)]
        notes += [f"{side.label} has no `{path}`." for side, data in zip((base, head), sides) if data is None]
        b, h = (data or {} for data in sides)
        rows = [[f"`{key}`", fmt(b.get(key)), fmt(h.get(key)), delta(b.get(key), h.get(key))]
                for key in dict.fromkeys([*h, *b])]
        if rows:
            parts += [f"**{kind.capitalize()}** (`{path}`)", "",
                      table(["metric", "base", "head", "change"], rows, MAX_ROWS), ""]
    return "\n".join(parts + ([" ".join(notes)] if notes else [])).rstrip()


def _side_by_side(title: str, old: dict | None, new: dict | None) -> str:
    """A {row: {fp32, int8}} table of both sides in one markdown table."""
    if old is None and new is None:
        return f"{title}: missing on both sides."
    old, new = old or {}, new or {}
    rows = []
    for row in dict.fromkeys([*new, *old]):
        b, h = old.get(row, {}), new.get(row, {})
        rows.append([_cell(row)] + [fmt(b.get(m)) for m in MODELS] + [fmt(h.get(m)) for m in MODELS]
                    + [delta(b.get("int8"), h.get("int8"))])
    return f"{title}\n\n" + table(["", "base FP32", "base INT8", "head FP32", "head INT8", "INT8 change"], rows, MAX_ROWS)


def tables_section(base: Side, head: Side) -> str:
    old, new = base.json(TABLES) or {}, head.json(TABLES) or {}
    return "\n\n".join([
        _side_by_side("**Table 1**: model cost", old.get("table1"), new.get("table1")),
        _side_by_side(f"**Table 2**: OOD detection, `{TABLE2}`", old.get("table2", {}).get(TABLE2),
                      new.get("table2", {}).get(TABLE2)),
        acceptance_section(base, head),
    ])


def acceptance_section(base: Side, head: Side) -> str:
    """What a user gets from each side's artifact: the share of each test set it takes as in-distribution at
    its threshold (test data, shown, not gated), with the head's FP32 model under the same rule."""
    old, new = base.json(PACKAGE) or {}, head.json(PACKAGE) or {}
    if "test_fpr" not in new:
        return "**What the artifact accepts**: the head has no `metrics/package.json` acceptance rates."
    b_fpr, twin = old.get("test_fpr", {}), new.get("fp32_twin", {}).get("test_fpr", {})
    rows = [["ID test images kept", fmt(_pct(old.get("test_tpr"))), fmt(_pct(new["test_tpr"])),
             delta(_pct(old.get("test_tpr")), _pct(new["test_tpr"])), fmt(_pct(new.get("fp32_twin", {}).get("test_tpr")))]]
    rows += [[f"`{s}` accepted", fmt(_pct(b_fpr.get(s))), fmt(_pct(v)), delta(_pct(b_fpr.get(s)), _pct(v)), fmt(_pct(twin.get(s)))]
             for s, v in new["test_fpr"].items()]
    title = (f"**What the artifact accepts** at its threshold (%, test data): base {old.get('detector', '—')}, "
             f"head {new.get('detector')}")
    return f"{title}\n\n" + table(["", "base INT8", "head INT8", "change", "head FP32, same rule"], rows, MAX_ROWS)


def _pct(value: Any) -> float | None:
    x = number(value)
    return None if x is None else 100 * x


def write_figures(head: Side, out_dir: Path, stem: str) -> list[tuple[str, str]]:
    """The head's figures as PNG beside the report, each only where its input exists: (caption, file name)."""
    import pandas as pd  # matplotlib and pandas only when figures are drawn

    from edgeml.reporting import figures

    drawn = []
    detector = (head.json(PACKAGE) or {}).get("detector", "msp")
    roc = {m: head.read(ROC_CSV.format(model=m, detector=detector, ood_set=ROC_SET)) for m in MODELS}
    if all(roc.values()):
        name = f"{stem}_roc.png"
        frames = {m: pd.read_csv(StringIO(text)) for m, text in roc.items()}
        figures.plot_roc_overlay(frames, f"ROC, {detector} vs {ROC_SET}", out_dir / name)
        drawn.append((f"ROC FP32 vs INT8, packaged detector ({detector}) vs {ROC_SET}", name))
    ood = head.json(OOD)
    if ood and all(m in ood for m in MODELS):
        change = pd.DataFrame({
            detector: {s: 100 * (ood["int8"][detector][s]["auroc"] - v["auroc"]) for s, v in sets.items()}
            for detector, sets in ood["fp32"].items()
        }).T
        name = f"{stem}_auroc_change.png"
        figures.plot_change_heatmap(change, "AUROC change, INT8 - FP32 (points)", out_dir / name)
        drawn.append(("AUROC change INT8 - FP32 (points), detector x OOD set", name))
    package = head.json(PACKAGE)
    if package and "fp32_twin" in package:
        name = f"{stem}_acceptance.png"
        figures.plot_acceptance(package, list(package["test_fpr"]), out_dir / name)
        drawn.append(("What the artifact accepts at its threshold, FP32 vs INT8", name))
    sweep = head.json(SWEEP)
    if sweep and sweep.get("recipes"):
        recipes = pd.DataFrame(sweep["recipes"]).T[["latency_ms", "max_auroc_drop_points"]].astype(float)
        name = f"{stem}_recipes.png"
        goal = (sweep.get("goals") or {}).get("auroc_drop_points")
        figures.plot_recipes(recipes, "latency_ms", "max_auroc_drop_points",
                             ("INT8 latency, batch 1 (ms)", "worst AUROC loss (points)"),
                             "Quantization recipes", out_dir / name, goal, sweep.get("best"))
        drawn.append(("Quantization recipes: latency vs worst AUROC loss (dashed: goal)", name))
    return drawn


def render(base: Side, head: Side, figure_files: list[tuple[str, str]], base_short: str, head_short: str) -> str:
    parts = [
        "## EdgeML review",
        "",
        f"Base `{base.label}` ({base_short}) → head `{head.label}` ({head_short}). "
        "Values from each side's metrics files; ✅/❌: meets its goal or not, on validation data.",
        "",
        data_source_changes(base, head),
        "### Parameters changed",
        "",
        params_section(base, head),
        "",
        "### Goals (validation data)",
        "",
        goals_section(base, head),
        "",
        "### Headline metrics (test data: shown, not gated)",
        "",
        metrics_section(base, head),
        "",
        "### Tables 1 and 2",
        "",
        tables_section(base, head),
        "",
    ]
    if figure_files:
        parts += ["### Figures (head)", ""] + [f"![{caption}]({name})\n" for caption, name in figure_files]
    text = "\n".join(parts)
    if len(text.encode()) > MAX_BYTES:  # only very long params diffs get here; cut at a line, say so
        cut = text.encode()[: MAX_BYTES - 200].decode(errors="ignore").rsplit("\n", 1)[0]
        text = cut + f"\n\n… report cut at {MAX_BYTES:,} bytes.\n"
    return text


def review(base_rev: str, head_rev: str | None, out: Path, root: Path | None = None) -> Path:
    """Write the report to `out` and its figures beside it; return `out`."""
    root = Path(_git(root or Path.cwd(), "rev-parse", "--show-toplevel"))
    base_short = resolve(root, base_rev)
    head_short = resolve(root, head_rev) if head_rev else f"on {resolve(root, 'HEAD')}"
    base, head = Side(root, base_rev), Side(root, head_rev)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure_files = write_figures(head, out.parent, out.stem)
    write_text(out, render(base, head, figure_files, base_short, head_short))
    return out


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "review",
        help="write a markdown report of a change: params, headline metrics, Tables 1 and 2, figures",
        description="Compares the metrics files committed at BASE with the working tree (or --head REV); "
        "writes one markdown file and its PNG figures beside it.",
    )
    parser.add_argument("--base", required=True, help="git revision to compare against, e.g. main or origin/main")
    parser.add_argument("--head", help="git revision of the change (default: the working tree)")
    parser.add_argument("--out", type=Path, default=Path("review.md"), help="markdown file to write (default: review.md)")


def run(args: argparse.Namespace) -> int:
    try:
        path = review(args.base, args.head, args.out)
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
