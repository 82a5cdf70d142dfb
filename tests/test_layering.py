"""The floors: diffmine.core <- diffmine.datasets <- finetune <- typicality <- diffmine.evaluation /
diffmine.report <- mining / diffmine.apps.* <- the CLI. No module imports a floor above its own, no
application imports another, and there is no cycle between modules, not even through a lazy import
inside a function or a relative import."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOF = 7
# module prefix -> floor; the longest matching prefix decides a module's floor
FLOORS = {
    "diffmine.core": 0,
    "diffmine.datasets": 1,
    "finetune": 2,
    "typicality": 3,
    "diffmine.evaluation": 4, "diffmine.report": 4,  # shared kits of mining and the applications
    "mining": 5,
    "diffmine.apps": 6,  # the applications: on the stages, each on its own
    "diffmine.cli": ROOF, "diffmine": ROOF,  # the roof: `diffmine` and its `python -m diffmine`
}
PACKAGES = ("finetune", "typicality", "mining", "diffmine")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> tuple[str, int] | None:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, FLOORS[prefix]
    return None


def app_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["diffmine", "apps"] and len(parts) > 2 else None


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every project module a file imports, lazy ones and relative ones (resolved) included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {n for n in names if n.split(".")[0] in PACKAGES}


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _existing(name: str, modules: set[str]) -> str | None:
    """The project module an imported name stands for (a name imported from a module maps to it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """`files` lie under `root`: the project's, or a copy of its layout in a temporary folder (probes)."""
    modules = {module_name(p) for p in project_files()} | {module_name(p, root) for p in files}
    bad = []
    for path in files:  # (sorted imports: one line per offending module)
        me = module_name(path, root)
        mine = floor_of(me)
        for name in sorted(imports_of(path, root)):
            other = _existing(name, modules)
            if other is None or other == me:
                continue
            theirs = floor_of(other)
            if mine is None or theirs is None:
                bad.append(f"{me} imports {other}: a module outside the floors")
            elif theirs[1] > mine[1] or (theirs[1] == mine[1] != ROOF and theirs[0] != mine[0]):
                bad.append(f"{me} imports {other} (floor {theirs[0]} is not below {mine[0]})")
            elif app_of(me) and app_of(other) and app_of(me) != app_of(other):
                bad.append(f"{me} imports {other}: one application imports another")
    return list(dict.fromkeys(bad))


def cycles(files: list[Path], root: Path = ROOT) -> list[list[str]]:
    names = {p: module_name(p, root) for p in files}
    modules = set(names.values())
    graph = {names[p]: {o for n in imports_of(p, root) if (o := _existing(n, modules)) and o != names[p]
                        and not names[p].startswith(o + ".")}  # a package's own __init__
             for p in files}
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_module_imports_a_floor_above_it_or_another_application():
    assert violations(project_files()) == []


def test_no_import_cycle_between_modules():
    assert cycles(project_files()) == []


def _probe(root: Path, relative: str, text: str) -> Path:
    """A probe module at `relative` in a copy of the project's layout under `root` (the source tree stays as it is)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_contract_catches_upward_relative_and_cross_application_imports(tmp_path):
    probe = _probe(tmp_path, "typicality/_layering_probe.py", "def f():\n    from mining.mine import run_mining\n")
    app_probe = _probe(tmp_path, "diffmine/apps/localize/_layering_probe.py", "from ..translate import run\n")
    bad = violations([probe, app_probe], tmp_path)
    assert bad == ["typicality._layering_probe imports mining.mine (floor mining is not below typicality)",
                   "diffmine.apps.localize._layering_probe imports diffmine.apps.translate: "
                   "one application imports another",
                   "diffmine.apps.localize._layering_probe imports diffmine.apps.translate.run: "
                   "one application imports another"]


def test_the_cycle_check_sees_a_cycle_through_relative_imports(tmp_path):
    a = _probe(tmp_path, "mining/_probe_a.py", "from ._probe_b import x\n")
    b = _probe(tmp_path, "mining/_probe_b.py", "def x():\n    from . import _probe_a\n")
    found = cycles([a, b], tmp_path)
    assert found == [["mining._probe_a", "mining._probe_b", "mining._probe_a"]]


def _project_names_imported(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from <project module> import name` in a file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in set(PACKAGES) | {"benchmarks"}:
            out += [(node.module, a.name) for a in node.names]
    return out


def missing_names(paths: list[Path]) -> list[str]:
    """"file: module.name" for every project name a file imports that neither exists nor is a submodule."""
    import importlib

    missing = []
    for path in paths:
        for module, name in _project_names_imported(path):
            mod = importlib.import_module(module)
            if not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{path.name}: {module}.{name}")
    return missing


def test_benchmarks_import_only_names_that_exist():
    """The benchmarks are run by hand, so a refactor that renames a constant they import (as
    the demo's DEMO_T_RANGE once was) would only show up when someone reruns them."""
    assert missing_names(sorted((ROOT / "benchmarks").glob("*.py"))) == []


def test_the_benchmark_import_check_would_catch_a_missing_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def main():\n    from diffmine.apps.demo.run import DEMO_T_RANGE, DemoConfig\n"
                     "    from diffmine.core import files\n")  # a submodule: not missing
    assert _project_names_imported(probe) == [("diffmine.apps.demo.run", "DEMO_T_RANGE"),
                                              ("diffmine.apps.demo.run", "DemoConfig"), ("diffmine.core", "files")]
    assert missing_names([probe]) == ["probe.py: diffmine.apps.demo.run.DEMO_T_RANGE"]  # the check the test above runs


def undefined_names(paths: list[Path]) -> list[str]:
    """"file:line: message" for every name a file uses where none is defined or imported (pyflakes)."""
    from pyflakes import checker, messages

    wrong = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    out = []
    for path in paths:
        found = checker.Checker(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), filename=str(path))
        out += [f"{path.relative_to(path.parents[1])}:{m.lineno}: {m.message % m.message_args}"
                for m in found.messages if isinstance(m, wrong)]
    return out


def test_no_code_uses_a_name_it_never_defined():
    """A benchmark is run by hand, days after a refactor: a name used before its lazy import (as
    vae_reconstruction's mean_interval and planted_elements' summary once were) only fails at its end."""
    paths = [p for folder in (*PACKAGES, "benchmarks", "tests") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(paths) > 100 and undefined_names(paths) == []


def test_the_undefined_name_check_catches_a_use_before_the_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    probe = tmp_path / "pkg" / "probe.py"
    probe.write_text("def main(xs):\n    y = mean_interval(xs)\n    from benchmarks.records import mean_interval\n"
                     "    return y\n")
    assert undefined_names([probe]) == ["pkg/probe.py:2: undefined name 'mean_interval'"]
