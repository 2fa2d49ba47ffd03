"""The package's shape: a lazy root, geometry on torch alone, no module shadowed by a function, no import cycle, the
floors of docs/architecture.md."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hf_llpf

PACKAGE = Path(hf_llpf.__file__).parent
HEAVY = ("timm", "datasets", "accelerate", "transformers", "huggingface_hub", "matplotlib")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_root_and_geometry_load_no_engine():
    root = _modules_after("import hf_llpf")
    assert not {m for m in root if m.split(".")[0] in (*HEAVY, "torch")}, "import hf_llpf must stay cheap"
    geometry = _modules_after("import hf_llpf.geometry")
    assert "torch" in geometry
    assert not {m for m in geometry if m.split(".")[0] in HEAVY}


def test_the_lazy_root_resolves_every_public_name():
    for name in hf_llpf.__all__:
        assert getattr(hf_llpf, name) is not None


def _module_names() -> list[str]:
    return ["hf_llpf"] + [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="hf_llpf.")]


def _file(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    return PACKAGE / rel / "__init__.py" if (PACKAGE / rel).is_dir() else PACKAGE / f"{rel}.py"


def test_no_module_is_shadowed_by_a_name_of_its_package():
    modules = set(_module_names())
    for package in [m for m in modules if _file(m).name == "__init__.py"]:
        tree = ast.parse(_file(package).read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        lazy = set(getattr(sys.modules.get(package) or __import__(package, fromlist=["_"]), "_LAZY", {}))
        children = {m.rsplit(".", 1)[1] for m in modules if m != package and m.rsplit(".", 1)[0] == package}
        assert not (defined | lazy) & children, f"{package}: {(defined | lazy) & children} shadow submodules"


def _imports(module: str) -> set[str]:
    """Every hf_llpf module ``module`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(_file(module).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    modules = set(_module_names())
    return {m for m in found if m in modules and m != module and m != "hf_llpf"}


def test_no_import_cycle():
    graph = {m: _imports(m) for m in _module_names()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = trail[trail.index(n) :] + [n] if n in trail else [m, n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*trail, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_at_most_fifteen_top_level_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, f"{len(top)} top-level modules: {top}; a new concept gets a package (docs/architecture.md)"


def test_the_documented_names_of_the_flat_layout_still_resolve():
    import hf_llpf.data
    import hf_llpf.data.bundle
    import hf_llpf.models
    import hf_llpf.models.endpoints
    import hf_llpf.run
    import hf_llpf.training.endpoint
    from hf_llpf.train import train_endpoint

    assert hf_llpf.data.load_data is hf_llpf.data.bundle.load_data
    assert hf_llpf.models.load_endpoint is hf_llpf.models.endpoints.load_endpoint
    assert train_endpoint is hf_llpf.training.endpoint.train_endpoint
    assert hf_llpf.Path is hf_llpf.RunPath is hf_llpf.run.Path is hf_llpf.run.RunPath
    assert sorted(hf_llpf.data.__all__) == sorted(hf_llpf.data.bundle.__all__)
    with pytest.raises(AttributeError, match="module 'hf_llpf.data' has no attribute 'nothing_here'"):
        hf_llpf.data.nothing_here  # noqa: B018


def test_a_data_submodule_loads_no_datasets():
    assert "datasets" not in _modules_after("import hf_llpf.data.loader")


def test_the_floors_hold():
    pytest.importorskip("importlinter")
    if not (PACKAGE.parent / "pyproject.toml").is_file():
        pytest.skip("the contracts live in the source checkout's pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout
