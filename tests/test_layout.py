"""The package's shape: the edge runtime (its own distribution, ./runtime) apart from the pipeline, and no
import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "src", ROOT / "runtime" / "src")  # edgeml: one namespace package over both distributions
# What the edge runtime may import from edgeml besides itself: the shared error base, nothing of the pipeline.
RUNTIME_MAY_IMPORT = ("edgeml.runtime", "edgeml.errors")
# Third-party packages a runtime module may import at module level: what every runtime extra has (numpy,
# Pillow). onnxruntime and openvino are imported only when an artifact of their format loads, so a device
# needs just one of them; torch only by runtime.torch_files, which only torch artifacts load.
RUNTIME_THIRD_PARTY = {"numpy", "PIL"}


def module_name(path: Path) -> str:
    source = next(s for s in SOURCES if path.is_relative_to(s))
    parts = path.relative_to(source).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    return any((s / Path(*name.split("."))).with_suffix(".py").exists() or (s / Path(*name.split(".")) / "__init__.py").exists()
               for s in SOURCES)


def imports(path: Path, module_level_only: bool = False, name: str | None = None) -> set[str]:
    """Modules ``path`` imports (``from a.b import c`` counts as a.b, and as a.b.c when that is a module);
    relative imports (``from . import x``, ``from ..model import y``) are resolved against ``path``'s package
    (``name``: its module name, for a file outside the source trees)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = (name or module_name(path)).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([module] if module else [])])
            if module:
                found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names if is_module(f"{module}.{alias.name}")}
    return found


def modules() -> dict[str, Path]:
    return {module_name(path): path for source in SOURCES for path in (source / "edgeml").rglob("*.py")}


def test_the_runtime_distribution_is_the_runtime_and_the_error_base_alone():
    shipped = {name for name, path in modules().items() if path.is_relative_to(SOURCES[1])}
    assert shipped == {name for name in modules() if name.startswith("edgeml.runtime")} | {"edgeml.errors"}
    assert not (SOURCES[0] / "edgeml" / "__init__.py").exists() and not (SOURCES[1] / "edgeml" / "__init__.py").exists()


def test_the_runtime_imports_nothing_from_the_pipeline():
    runtime = {name: path for name, path in modules().items() if name.startswith("edgeml.runtime")}
    assert {"edgeml.runtime.artifact", "edgeml.runtime.runners", "edgeml.runtime.images", "edgeml.runtime.cli"} <= set(runtime)
    for name, path in runtime.items():
        pipeline = {m for m in imports(path) if m.startswith("edgeml") and not m.startswith(RUNTIME_MAY_IMPORT)}
        assert not pipeline, f"{name} imports pipeline modules {sorted(pipeline)}"


def test_the_runtime_imports_only_the_runtime_extra_at_module_level():
    for name, path in modules().items():
        if not name.startswith("edgeml.runtime") or name == "edgeml.runtime.torch_files":
            continue
        third_party = {m.partition(".")[0] for m in imports(path, module_level_only=True)} - {"edgeml", "__future__"}
        heavy = {m for m in third_party if m in {"torch", "torchvision", "onnx", "yaml", "pandas", "sklearn", "scipy"}}
        assert not heavy, f"{name} imports {sorted(heavy)} at module level"
        assert third_party & {"numpy", "PIL", "onnxruntime", "openvino", "torch"} <= RUNTIME_THIRD_PARTY, name


def test_the_checker_sees_a_pipeline_import(tmp_path):
    # the check above is not vacuous: an edgeml.quantization import inside a function is caught
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edgeml.quantization import load_file\n")
    assert "edgeml.quantization" in imports(bad)
    # ... and so is a relative one, from a runtime module up into the pipeline
    relative = tmp_path / "probe.py"
    relative.write_text("from ..reporting import review\nfrom . import images\n")
    assert imports(relative, name="edgeml.runtime.probe") >= {
        "edgeml.reporting", "edgeml.reporting.review", "edgeml.runtime", "edgeml.runtime.images"}


def test_no_import_cycles_at_module_level():
    graph = {
        name: {m for m in imports(path, module_level_only=True) if m in modules() and m != name}
        for name, path in modules().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [name, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
