"""dvc.yaml says what each stage really depends on: the library modules its script imports (directly,
through other modules, or by name through a registry), no more and no less, so a change re-runs exactly the stages it can affect."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "src", ROOT / "runtime" / "src")  # edgeml is a namespace package over both distributions


def _module_file(name: str) -> Path:
    """The file of module ``name`` in whichever distribution has it (the pipeline's path when neither does)."""
    for source in SOURCES:
        path = source / Path(*name.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if file.exists():
            return file
    return SOURCES[0] / Path(*name.split(".")).with_suffix(".py")


REGISTERED = re.compile(r"(edgeml(?:\.\w+)+):\w+")  # a registry entry "module:Class", imported when used


def edgeml_imports(path: Path) -> set[str]:
    """edgeml modules named in ``path``'s imports (module level or inside functions), and those its
    registries load by name (``"edgeml.quantization.pt2e:PT2EX86Quantizer"``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTERED.fullmatch(node.value):
            names.add(REGISTERED.fullmatch(node.value).group(1))
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from edgeml import params` imports the module edgeml.params
            names |= {f"{node.module}.{alias.name}" for alias in node.names if _module_file(f"{node.module}.{alias.name}").exists()}
    return {n for n in names if n.startswith("edgeml.") and _module_file(n).exists()}


def closure(path: Path) -> set[str]:
    """Library files reachable from ``path`` by imports, as repository-relative paths (a package's
    ``__init__`` counts as imported with any of its modules)."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        for name in edgeml_imports(todo.pop()):
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):
                file = _module_file(".".join(parts[:depth]))
                rel = file.relative_to(ROOT).as_posix()
                if rel not in seen:
                    seen.add(rel)
                    todo.append(file)
    return seen


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in raw.items():
        if "foreach" in stage:
            stage = stage["do"]
        out[name] = stage
    return out


def _deps(stage: dict) -> set[str]:
    return {next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_exactly_the_library_modules_it_imports(name):
    stage = stages()[name]
    script = ROOT / stage["cmd"].split()[1]
    declared = {d for d in _deps(stage) if d.startswith(("src/", "runtime/src/"))}
    imported = closure(script)
    # a declared folder covers every module under it
    covered = {m for m in imported if any(m == d or m.startswith(d.rstrip("/") + "/") for d in declared)}
    assert covered == imported, f"{name}: imports {sorted(imported - covered)} but does not depend on them"
    unused = {d for d in declared if not any(m == d or m.startswith(d.rstrip("/") + "/") for m in imported)}
    assert not unused, f"{name}: depends on {sorted(unused)} but never imports it"
    assert script.relative_to(ROOT).as_posix() in _deps(stage), f"{name}: does not depend on its own script"


def test_no_stage_depends_on_the_whole_library_or_whole_param_sections_it_does_not_read():
    for name, stage in stages().items():
        assert "src/edgeml" not in _deps(stage), f"{name}: depends on the whole library"
    sweep = stages()["sweep"]
    flat = {p if isinstance(p, str) else next(iter(p)) for p in sweep["params"]}
    assert "bench" not in flat and "bench.artifact_images" not in flat  # the artifact bench is not a recipe's business
    assert not any(p in ("train", "model") for p in stages()["quantize"].get("params", []))


def test_train_stage_can_enter_the_run_cache():
    # persist: true keeps an output across runs, which DVC's run-cache cannot restore
    text = (ROOT / "dvc.yaml").read_text()
    assert "persist: true" not in text


def test_every_path_the_code_names_is_declared_in_dvc_yaml():
    """edgeml.paths is the code's one copy of dvc.yaml's paths: a path renamed in one place only fails here.
    A path counts as declared when it, or a folder holding it, is a stage's dep or output."""
    from pathlib import PurePath

    from edgeml import paths

    entries = set()
    for stage in stages().values():
        for key in ("deps", "outs", "metrics", "plots"):
            entries |= {next(iter(e)) if isinstance(e, dict) else e for e in stage.get(key, [])}
    declared = lambda path: any(path == e or path.startswith(e.rstrip("/") + "/") for e in entries)  # noqa: E731
    named = {value.as_posix() for value in vars(paths).values() if isinstance(value, PurePath)}
    named |= {*(paths.ood_set(f"${{ood.validation_sets.{group}}}").as_posix() for group in ("near", "far")),
              paths.metrics("train").as_posix(),
              paths.scores("int8", "msp").as_posix()}
    undeclared = sorted(path for path in named if not declared(path) and path not in ("metrics", "plots", paths.CHECKPOINT.as_posix(), paths.FINETUNE_WORK.as_posix()))
    assert len(named) >= 14 and not undeclared, f"edgeml.paths names {undeclared}, which dvc.yaml does not declare"


def test_training_code_reruns_the_train_stage_alone():
    """An edit to PixMix, RotPred or the train stage's loop leaves every later stage up to date (`dvc status`):
    with each stage's deps its exact import closure (above), none but train may reach those modules."""
    training = {"src/edgeml/model/pixmix.py", "src/edgeml/model/rotpred.py", "src/edgeml/model/train.py"}
    for name, stage in stages().items():
        reached = closure(ROOT / stage["cmd"].split()[1]) & training
        assert name == "train" or not reached, f"{name} reaches {sorted(reached)}"
    assert training <= closure(ROOT / "stages/train.py")
