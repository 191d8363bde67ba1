"""`edgeml review` end to end on a throwaway git repository with two commits whose metrics differ."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from edgeml import cli
from edgeml.params import QuantizeParams
from edgeml.reporting import review

SETS = ("tin_crop", "mnist")
RECIPES = {"a": {"backend": "onnxruntime", "observer": "minmax"}, "b": {"backend": "fbgemm"}}


def recipe(name: str) -> dict:
    """A sweep row's recipe: every QuantizeParams field, as the sweep stage writes it."""
    return dataclasses.asdict(QuantizeParams(**RECIPES[name]))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def write(repo: Path, path: str, data: object) -> None:
    file = repo / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(data) if path.endswith(".yaml") else json.dumps(data))


def commit(repo: Path, shift: float, summary: dict, timing: dict, lr: float, quantize: str, rows: dict) -> None:
    """One revision of the pipeline's outputs; `shift` moves every INT8 quality number; params `quantize`
    is sweep recipe `quantize`, and `rows` are the sweep's validation numbers per recipe."""
    write(repo, "params.yaml", {"train": {"lr": lr, "epochs": 3}, "quantize": RECIPES[quantize]})
    write(repo, "metrics/summary.json", summary)
    write(repo, "metrics/timing.json", timing)
    write(repo, "metrics/package.json", {"detector": "msp"})
    write(repo, "metrics/tables.json", {
        "table1": {"Model size (MB)": {"fp32": 44.7, "int8": 11.2 + shift}, "GPU latency (ms/sample)":
                   {"fp32": "not measured: no CUDA GPU", "int8": "not measured: no CUDA GPU"}},
        "table2": {"msp/tin_crop": {"AUROC (%)": {"fp32": 78.0, "int8": 77.0 + shift}}},
    })
    auroc = {m: {d: {s: {"auroc": 0.8 + (shift if m == "int8" else 0) / 100} for s in SETS} for d in ("msp", "knn")}
             for m in ("fp32", "int8")}
    write(repo, "metrics/ood.json", {"id_split": {"name": "openood"}, **auroc})
    write(repo, "metrics/quant_sweep.json", {
        "goals": {"auroc_drop_points": 0.5}, "best": "a",
        "recipes": {name: {"recipe": recipe(name), "latency_ms": 0.5 + i, **rows[name]} for i, name in enumerate(RECIPES)},
    })
    for model in ("fp32", "int8"):
        (repo / f"plots/ood/roc/{model}").mkdir(parents=True, exist_ok=True)
        (repo / f"plots/ood/roc/{model}/msp_tin_crop.csv").write_text("fpr,tpr\n0,0\n0.1,0.6\n1,1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"shift {shift}")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(review, "GOALS", {"top1_drop_points": ("<=", 0.3), "size_ratio": (">=", 3.9),
                                          "speedup": (">=", 3.0), "max_auroc_drop_points": ("<=", 0.5)})
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    # validation numbers (sweep rows) that the goals judge, and test numbers (headline) that are only shown
    val = {"top1_drop_points": 0.5, "size_ratio": 4.0, "max_auroc_drop_points": 0.4, "speedup": 2.0}
    base = {"top1_drop": 0.05, "size_ratio": 4.0, "worst_auroc_drop": 0.9, "removed_key": 1.0}
    commit(repo, 0.0, base, {"cpu_speedup_batch1": 2.0, "cpu_ms_int8": 0.25}, lr=0.2, quantize="a", rows={"a": val, "b": val})
    head_val = {"top1_drop_points": 0.1, "size_ratio": 3.5, "max_auroc_drop_points": 0.4, "speedup": 3.2}
    head = {"top1_drop": 0.1, "size_ratio": 3.5, "worst_auroc_drop": 0.4, "new_key": 7.0}
    commit(repo, 1.0, head, {"cpu_speedup_batch1": 3.2, "cpu_ms_int8": 0.25}, lr=0.1, quantize="a",
           rows={"a": head_val, "b": val})
    monkeypatch.chdir(repo)
    return repo


def rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_review_two_commits(repo: Path) -> None:
    out = repo / "out" / "review.md"
    assert cli.main(["review", "--base", "HEAD~1", "--head", "HEAD", "--out", str(out)]) == 0
    text = out.read_text()
    table = rows(text)
    assert table["`train.lr`"] == ["0.2", "0.1"]
    assert "`train.epochs`" not in table  # unchanged params are not listed
    goals = rows(text[text.index("### Goals"):text.index("### Headline")])
    assert goals["`top1_drop_points`"] == ["0.5 ❌", "0.1 ✅", "-0.4 (-80.0%)", "<= 0.3"]
    assert goals["`size_ratio`"] == ["4.00 ✅", "3.50 ❌", "-0.5 (-12.5%)", ">= 3.9"]
    assert goals["`max_auroc_drop_points`"] == ["0.4 ✅", "0.4 ✅", "0", "<= 0.5"]
    assert goals["`speedup`"] == ["2.00 ❌", "3.20 ✅", "+1.20 (+60.0%)", ">= 3"]
    # test numbers are shown, never marked: base's test top-1 drop (0.05) would meet the goal its validation one misses
    assert table["`top1_drop`"] == ["0.05", "0.1", "+0.05 (+100.0%)"]
    assert table["`worst_auroc_drop`"] == ["0.9", "0.4", "-0.5 (-55.6%)"]
    assert table["`cpu_ms_int8`"] == ["0.25", "0.25", "0"]
    assert "params.yaml `quantize` is" not in text  # head's quantize is the sweep's best
    assert text.index("**Quality** (`metrics/summary.json`)") < text.index("**Timing** (`metrics/timing.json`)")
    assert table["`new_key`"] == ["—", "7.00", ""]
    assert table["`removed_key`"] == ["1.00", "—", ""]
    assert ("Goals met: base 2/4, head 3/4; **no longer met: size_ratio**; newly met: top1_drop_points, speedup."
            in text)
    assert table["Model size (MB)"] == ["44.70", "11.20", "44.70", "12.20", "+1.00 (+8.9%)"]
    assert table["GPU latency (ms/sample)"][:2] == ["not measured", "not measured"]
    assert table["AUROC (%)"] == ["78.00", "77.00", "78.00", "78.00", "+1.00 (+1.3%)"]
    for name in ("review_roc.png", "review_auroc_change.png", "review_recipes.png"):
        assert f"]({name})" in text
        assert (out.parent / name).read_bytes().startswith(b"\x89PNG")
    assert len(text.encode()) <= review.MAX_BYTES


def test_review_working_tree_with_missing_files(repo: Path) -> None:
    """Head defaults to the working tree; a side without a file is reported, and its figures left out."""
    (repo / "metrics/summary.json").unlink()
    for path in ("metrics/quant_sweep.json", "plots/ood/roc/int8/msp_tin_crop.csv"):
        (repo / path).unlink()
    out = review.review("HEAD~1", None, repo / "review.md")
    text = out.read_text()
    assert "working tree has no `metrics/summary.json`." in text
    assert rows(text)["`top1_drop`"] == ["0.05", "—", ""]
    assert rows(text)["`top1_drop_points`"] == ["0.5 ❌", "not measured", "", "<= 0.3"]  # the working tree has no sweep
    assert "review_auroc_change.png" in text and "review_roc.png" not in text and "review_recipes.png" not in text
    assert not (repo / "review_roc.png").exists()


def test_review_cuts_a_huge_params_diff(repo: Path) -> None:
    write(repo, "params.yaml", {"sweep": {f"recipe_{i}": {"backend": "x" * 200, "seed": i} for i in range(2000)}})
    text = review.review("HEAD", None, repo / "review.md").read_text()
    assert len(text.encode()) <= review.MAX_BYTES
    assert f"… {4000 + 4 - review.MAX_ROWS} more rows not shown." in text  # 4,000 keys added; train.*, quantize.* gone


def test_review_unknown_base(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["review", "--base", "origin/nope"]) == 2
    assert "unknown revision 'origin/nope'" in capsys.readouterr().err


def test_review_flags_a_changed_data_source(repo: Path) -> None:
    """A dataset fetched from another source (the mirror's JPEG CIFAR-10 vs the official pixels) or as
    another file is flagged above everything else; unchanged sources add nothing."""
    mirror, official = "../shared/datasets/cifar10-jpeg.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    mnist = "../shared/datasets/mnist/t10k-images-idx3-ubyte.gz"
    write(repo, "data/sources.json", {"cifar10": {"source": mirror, "sha256": "a" * 64},
                                      "mnist": {"source": mnist, "sha256": "b" * 64}})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fetched from the mirror")
    assert "Data source changed" not in review.review("HEAD~1", "HEAD", repo / "review.md").read_text()  # base has none
    write(repo, "data/sources.json", {"cifar10": {"source": official, "sha256": "c" * 64, "failed_sources": [mirror]},
                                      "mnist": {"source": mnist, "sha256": "d" * 64}})
    text = review.review("HEAD", None, repo / "review.md").read_text()
    assert "> ⚠️ **Data source changed** (`data/sources.json`)" in text
    assert f"> - `cifar10`: `{mirror}` → `{official}`" in text
    assert f"> - `mnist`: another file from `{mnist}` (sha256 `bbbbbbbbbbbb…` → `dddddddddddd…`)" in text
    assert text.index("Data source changed") < text.index("### Parameters changed")
    assert "Data source changed" not in review.review("HEAD", "HEAD", repo / "review.md").read_text()


def test_review_says_loudly_when_params_quantize_is_not_the_sweeps_best(repo: Path) -> None:
    write(repo, "params.yaml", {"train": {"lr": 0.1, "epochs": 3}, "quantize": RECIPES["b"]})
    text = review.review("HEAD", None, repo / "review.md").read_text()
    assert "> ⚠️ **params.yaml `quantize` is recipe `b`, but the sweep's best is `a`**" in text
    write(repo, "params.yaml", {"quantize": {"backend": "qnnpack"}})  # no sweep recipe at all
    text = review.review("HEAD", None, repo / "review.md").read_text()
    assert "> ⚠️ **params.yaml `quantize` is no sweep recipe, but the sweep's best is `a`**" in text


def test_an_experiment_outside_the_sweep_is_judged_on_its_own_validation_numbers(repo: Path) -> None:
    """`dvc exp run -S quantize.per_channel=false`: no sweep row is that recipe, but the evaluate stage judged
    it on validation and the bench stage timed it; a number truly missing reads "not measured", never a loss."""
    write(repo, "params.yaml", {"train": {"lr": 0.1, "epochs": 3}, "quantize": {**RECIPES["a"], "per_channel": False}})
    write(repo, "metrics/evaluate.json", {"validation": {"top1_drop_points": 0.2, "max_auroc_drop_points": 0.7, "size_ratio": 4.01}})
    write(repo, "metrics/bench.json", {"compute": {"int8_speedup_vs_fastest_fp32": 4.5}})
    text = review.review("HEAD", None, repo / "review.md").read_text()
    goals = rows(text[text.index("### Goals"):text.index("### Headline")])
    assert goals["`top1_drop_points`"][1] == "0.2 ✅" and goals["`max_auroc_drop_points`"][1] == "0.7 ❌"
    assert goals["`size_ratio`"][1] == "4.01 ✅" and goals["`speedup`"][1] == "4.50 ✅"
    assert "head from `metrics/evaluate.json` and `metrics/bench.json`" in text
    assert "Goals met: base 3/4, head 3/4; **no longer met: max_auroc_drop_points**; newly met: size_ratio." in text
    assert "params.yaml `quantize` is no sweep recipe" in text  # still loud: not the sweep's choice
    (repo / "metrics/bench.json").unlink()  # e.g. the bench stage failed: only the speed-up is unmeasured
    text = review.review("HEAD", None, repo / "review.md").read_text()
    goals = rows(text[text.index("### Goals"):text.index("### Headline")])
    assert goals["`speedup`"][1] == "not measured" and goals["`size_ratio`"][1] == "4.01 ✅"
    assert "not measured on head: speedup." in text and "no longer met: max_auroc_drop_points**" in text


def test_review_shows_what_each_sides_artifact_accepts(repo: Path) -> None:
    def package(detector: str, fpr: float, twin: float) -> dict:
        return {"detector": detector, "test_tpr": 0.95, "test_fpr": {"tin_crop": fpr, "mnist": fpr / 2},
                "fp32_twin": {"threshold": 1.0, "test_tpr": 0.95, "test_fpr": {"tin_crop": twin, "mnist": twin / 2}}}

    write(repo, "metrics/package.json", package("gen", 0.58, 0.57))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "gen")
    write(repo, "metrics/package.json", package("vim", 0.30, 0.31))
    out = review.review("HEAD", None, repo / "review.md")
    text = out.read_text()
    assert "**What the artifact accepts** at its threshold (%, test data): base gen, head vim" in text
    assert rows(text)["`tin_crop` accepted"] == ["58.00", "30.00", "-28.00 (-48.3%)", "31.00"]
    assert (out.parent / "review_acceptance.png").read_bytes().startswith(b"\x89PNG")
