"""The floors: finetune <- typicality <- evaluation <- mining / applications <- CLI (diffmine).
No package imports one above it, and there is no cycle, not even a lazy import inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> floor; a package may import only packages on lower floors (and itself)
FLOORS = {"finetune": 0, "typicality": 1, "evaluation": 2, "mining": 3, "diffmine": 5}
APPLICATIONS = ("localize", "anomaly", "translate")  # top floor, beside each other, above mining
FLOORS.update({app: 4 for app in APPLICATIONS if (ROOT / app).is_dir()})


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):  # every import, also the ones inside functions
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_package_imports_a_floor_above_it():
    bad = []
    for pkg, floor in FLOORS.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for name in _imports(path) & set(FLOORS):
                if name != pkg and FLOORS[name] >= floor:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_the_contract_itself_would_catch_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mining.mine import run_mining\n")
    assert "mining" in _imports(probe)


def _project_names_imported(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from <project module> import name` in a file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in set(FLOORS) | {"benchmarks"}:
            out += [(node.module, a.name) for a in node.names]
    return out


def test_benchmarks_import_only_names_that_exist():
    """The benchmarks are run by hand, so a refactor that renames a constant they import (as
    mining.demo.DEMO_T_RANGE once was) would only show up when someone reruns them."""
    import importlib

    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for module, name in _project_names_imported(path):
            if not hasattr(importlib.import_module(module), name):
                missing.append(f"{path.name}: {module}.{name}")
    assert missing == []


def test_the_benchmark_import_check_would_catch_a_missing_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def main():\n    from mining.demo import DEMO_T_RANGE\n")
    assert _project_names_imported(probe) == [("mining.demo", "DEMO_T_RANGE")]
    import importlib
    assert not hasattr(importlib.import_module("mining.demo"), "DEMO_T_RANGE")
