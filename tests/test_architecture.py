"""The pipeline's layers hold: no module imports upward (ARCHITECTURE.md), and each name set is declared once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reportgen"

# ARCHITECTURE.md's table, lowest first: a module may import its own layer and the layers below it, never above.
LAYERS = {
    "foundation": ("errors", "config", "registry", "progress", "watchdog", "layer_kinds", "userfiles", "outlock",
                   "seeds", "report_folder", "graph", "precision", "example", "sample_sizes"),
    "load": ("loading",),
    "compute": ("techniques", "dataset", "ray_engine"),
    "report model": ("report", "analysis", "sections", "figures", "verdict"),
    "render": ("render", "plot_worker", "summary_md"),
    "commands": ("api", "cli", "startup", "check", "check_render", "diff", "publish", "notebook", "keras",
                 "side_files", "__main__"),
}
ORDER = list(LAYERS)
# The package's face hands on `generate_report` lazily (`reportgen/__init__.py`'s __getattr__): not an import of
# the pipeline by any layer.
FACE = "reportgen"


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "reportgen" or len(parts) == 1:
        return None
    return next((name for name, heads in LAYERS.items() if parts[1] in heads), None)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every reportgen module `path` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("reportgen"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reportgen"):
            out.add(node.module)
            if node.module == "reportgen":  # `from reportgen import figures`
                out.update(f"reportgen.{alias.name}" for alias in node.names)
    return out


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if name != FACE and layer_of(name) is None]
    assert unplaced == [], f"add these to ARCHITECTURE.md's table and LAYERS: {unplaced}"


def test_no_module_imports_upward():
    upward = []
    for name, path in sorted(modules().items()):
        if name == FACE:
            continue
        own = ORDER.index(layer_of(name))
        for imported in imports(path):
            layer = layer_of(imported)
            if layer is not None and ORDER.index(layer) > own:
                upward.append(f"{name} ({layer_of(name)}) imports {imported} ({layer})")
    assert upward == []


def test_layers_see_the_test_itself_fail_on_an_upward_import(tmp_path, monkeypatch):
    """The check is real: a technique that imported the renderer would be caught."""
    fake = tmp_path / "reportgen" / "techniques"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from reportgen.render import write_report\n")
    assert "reportgen.render" in imports(fake / "bad.py")
    assert ORDER.index(layer_of("reportgen.render")) > ORDER.index(layer_of("reportgen.techniques.bad"))


@pytest.mark.parametrize("names", ["section", "cam method", "pattern method", "preprocess mode"])
def test_each_name_set_is_declared_once(names):
    """No module but the registry spells out a whole name set: a tuple, list or set literal holding three or more
    of its names appears nowhere else (`__all__` lists of functions that share a name with a method aside)."""
    from reportgen import registry

    declared = {
        "section": registry.section_names(),
        "cam method": registry.names(registry.CAM_METHODS),
        "pattern method": registry.names(registry.PATTERN_METHODS),
        "preprocess mode": registry.names(registry.PREPROCESS_MODES),
    }[names]
    repeated = []
    for name, path in modules().items():
        if name == "reportgen.registry":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exported = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and id(node) not in exported:
                values = {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}
                if len(values & set(declared)) >= 3:
                    repeated.append(f"{name}:{node.lineno}")
    assert repeated == []
