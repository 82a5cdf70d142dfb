"""Each default and each check once: a setting's default value is written as a literal in one place, and
a setting's range check is written by hand in one place (the others call it).

Read as text (no model, no torch): every command's config module, the project modules they import, the
estimators that take a config's settings as their parameters (`ESTIMATORS`), and the modules that fill in
a default a config leaves as None (`FILLERS`). A *declaration* of a setting's
value is any of:

- a dataclass field of that name with a literal default (`option(100, ...)`, `null_rate: float = 0.05`);
- a field whose default is a module constant (`option(DEFAULT_DRAWS)`): declared where the constant is
  assigned, once however many fields use it; likewise a constant whose name holds the setting's name
  (`_PUBLISHED_PATCH` for `patch`);
- a number in the help of a field that defaults to None: the help says what None stands for
  ("(default: 100)"), so a number there is the value written again;
- `self.epochs or 100`, `x if x is not None else 100`, `f(kmeans_iter=20)`, `def f(null_rate=0.05)`;
- a value of that key in a JSON file the settings read (`layers.json`).

The same (setting, value) declared in two places fails. None and False are no values (a setting
left unset, a flag left off); `batch_size` and `seed` are each command's own (`PER_COMMAND`); a value
a command chooses on purpose, whatever the default, says so on its line or the line above: "not a default".

A hand-written check of a setting (`check(cond, "t_range", ...)`, `raise ConfigError("t_range", ...)`)
in two places of the config modules and the modules they import fails too: the second place calls a
shared checker (`check_t_range`, `check_range`, `check_positive`, ...) instead. A rule that ties a
setting to another (`check(self.feature != "dift" or self.model, "model", ...)`) is no range check.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # module -> the command config dataclasses it declares
    "finetune.config": ("TrainConfig",),
    "typicality.config": ("TypicalityConfig",),
    "mining.config": ("MineConfig",),
    "diffmine.apps.anomaly.config": ("AnomalyFitConfig", "AnomalyScoreConfig"),
    "diffmine.apps.changes.config": ("ChangesConfig",),
    "diffmine.apps.classify.config": ("ClassifyConfig",),
    "diffmine.apps.localize.config": ("LocalizeConfig",),
    "diffmine.apps.translate.config": ("TranslateConfig",),
    "diffmine.apps.demo.run": ("DemoConfig", "AssetsConfig"),
}
FILLERS = {  # modules that fill in a default a config leaves as None, or use the settings' values
    "finetune/train.py": "vae_steps, epochs",
    "mining/patches.py": "patch (the published patch sizes)",
    "mining/stages.py": "mining's stages, which other applications call",
    "diffmine/apps/translate/layers.py": "residual_injection, attention_injection (the published shares)",
    "diffmine/apps/translate/layers.json": "the shares per UNet layout",
    "diffmine/apps/changes/run.py": "changes' clustering (mining's settings)",
    "diffmine/apps/localize/run.py": "draws (the typicality engine's)",
}
# Estimators that take a config's settings as their own parameters and check them: scanned as the configs
# are (for defaults and for hand-written checks), each with its own modules.
ESTIMATORS = {
    "diffmine/apps/anomaly/detector.py": "DiffusionDetector: AnomalyFitConfig's settings as PyOD parameters",
    "diffmine/apps/anomaly/kinds": "the detector's score kinds (a module per kind)",
}
# Each command sizes its own forwards and seeds its own draws: the same number there is no shared default.
PER_COMMAND = {"batch_size", "seed"}
ON_PURPOSE = "not a default"
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.]*\w)")


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def setting_names() -> set[str]:
    names = set()
    for module, classes in CONFIGS.items():
        mod = importlib.import_module(module)
        for cls in classes:
            names.update(f.name for f in dataclasses.fields(getattr(mod, cls)))
    return names


def scanned_files(fillers: bool = True) -> list[Path]:
    """The config modules, the project modules they import, ESTIMATORS, and FILLERS."""
    files = {_module_file(m) for m in CONFIGS}
    for module in CONFIGS:
        for node in ast.parse(_module_file(module).read_text(encoding="utf-8")).body:  # what it draws from
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                path = _module_file(node.module)
                if path is not None:
                    files.add(path)
    for place in ESTIMATORS:
        path = ROOT / place
        files.update(sorted(path.glob("*.py")) if path.is_dir() else [path])
    if fillers:
        files.update(ROOT / p for p in FILLERS)
    return sorted(files)


def _literal(node):
    """The node's value if it is a literal that declares something (not None, not False), else None."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if value is None or value is False:
        return None
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        return value if value and all(isinstance(v, (int, float, str, tuple)) for v in value) else None
    return value if isinstance(value, (int, float, str)) else None


class _Constants:
    """Module-level `NAME = literal` of the scanned modules, followed through `from m import NAME`."""

    def __init__(self, files: list[Path]):
        self.assigned: dict[str, dict[str, tuple]] = {}
        self.imported: dict[str, dict[str, str]] = {}
        for path in files:
            if path.suffix != ".py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            own, imports = {}, {}
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = _literal(node.value)
                    if value is not None:
                        own[node.targets[0].id] = (value, f"{_rel(path)}:{node.lineno}")
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            self.assigned[_module_name(path)], self.imported[_module_name(path)] = own, imports

    def resolve(self, module: str, name: str):
        """(value, place) of a constant seen from `module`, or None."""
        for _ in range(5):
            if name in self.assigned.get(module, {}):
                return self.assigned[module][name]
            target = self.imported.get(module, {}).get(name)
            if target is None:
                return None
            module, _, name = target.rpartition(".")
        return None


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _help_strings(node) -> str:
    """The literal text of a help argument (an f-string's values are references, not literals)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(_help_strings(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _help_strings(node.left) + " " + _help_strings(node.right)
    return ""


def _option_call(node) -> ast.Call | None:
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "option":
        return node
    return None


def _attr_name(node) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def declarations(files: list[Path], names: set[str]) -> dict[tuple, set[str]]:
    """(setting, value) -> the places that declare it."""
    constants = _Constants(files)
    found: dict[tuple, set[str]] = defaultdict(set)

    def add(name, value, place):
        if name in names and value is not None and name not in PER_COMMAND:
            found[(name, value)].add(place)

    def value_of(node, module):
        """(value, place) of a default expression: a literal here, or a module constant where assigned."""
        value = _literal(node)
        if value is not None:
            return value, None
        if isinstance(node, ast.Name):
            return constants.resolve(module, node.id)
        return None

    for path in files:
        if path.suffix == ".json":
            def walk(obj):
                if isinstance(obj, dict):
                    for key, value in obj.items():
                        if isinstance(value, (dict, list)):
                            walk(value)
                        elif key in names:
                            add(key, value, _rel(path))
                elif isinstance(obj, list):
                    for value in obj:
                        walk(value)
            walk(json.loads(path.read_text(encoding="utf-8")))
            continue
        module = _module_name(path)
        text = path.read_text(encoding="utf-8")
        lines, tree = text.splitlines(), ast.parse(text)
        here = lambda node: f"{_rel(path)}:{node.lineno}"  # noqa: E731
        for name, (value, place) in constants.assigned[module].items():  # `PUBLISHED_PATCH` for patch
            for setting in names:
                if re.search(rf"(^|_){setting.upper()}(_|$)", name):
                    for v in (value if isinstance(value, tuple) else (value,)):
                        for n in (v if isinstance(v, tuple) else (v,)):
                            if isinstance(n, (int, float)):  # numbers: a constant of choices is no default
                                add(setting, n, place)
        for node in ast.walk(tree):
            if hasattr(node, "lineno") and ON_PURPOSE in " ".join(lines[max(node.lineno - 2, 0):node.lineno]):
                continue
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                name, call = node.target.id, _option_call(node.value)
                default = (call.args[0] if call.args else None) if call else node.value
                if call is not None:
                    default = next((k.value for k in call.keywords if k.arg == "default"), default)
                got = value_of(default, module) if default is not None else None
                if got is not None:
                    add(name, got[0], got[1] or here(node))
                if call is not None and (got is None or got[0] is None):
                    helps = [call.args[1]] if len(call.args) > 1 else []
                    helps += [k.value for k in call.keywords if k.arg == "help"]
                    unset = default is None or (isinstance(default, ast.Constant) and default.value is None)
                    for text in map(_help_strings, helps):
                        for number in NUMBER.findall(text) if unset else ():
                            add(name, ast.literal_eval(number), here(node))
            elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
                got = value_of(node.values[1], module)
                if got is not None and got[1] is None:
                    add(_attr_name(node.values[0]), got[0], here(node))
            elif isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare):
                got = value_of(node.orelse, module)
                if got is not None and got[1] is None:
                    add(_attr_name(node.test.left), got[0], here(node))
            elif isinstance(node, ast.Call) and _option_call(node) is None:
                for kw in node.keywords:
                    got = value_of(kw.value, module) if kw.arg else None
                    if got is not None and got[1] is None:
                        add(kw.arg, got[0], here(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args
                pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
                pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
                for arg, default in pairs:
                    got = value_of(default, module)
                    if got is not None and got[1] is None:
                        add(arg.arg, got[0], here(node))
    return found


def hand_written_checks(files: list[Path], names: set[str]) -> dict[str, set[str]]:
    """setting -> the places that check it by hand (`check(cond, "name", ...)`, `ConfigError("name", ...)`,
    a shared checker `def check_t_range(..., param="t_range")`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in files:
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):  # a shared checker's setting
                args = node.args.args
                for arg, default in zip(args[len(args) - len(node.args.defaults):], node.args.defaults):
                    if arg.arg == "param" and isinstance(default, ast.Constant) and default.value in names:
                        found[default.value].add(f"{_rel(path)}:{node.lineno}")
            if not isinstance(node, ast.Call):
                continue
            callee = _attr_name(node.func)
            index = {"check": 1, "ConfigError": 0}.get(callee)
            if index is None or len(node.args) <= index:
                continue
            param = node.args[index]
            others = {n.attr for n in ast.walk(node.args[0]) if isinstance(n, ast.Attribute)} - {param.value
                                                                                                 if isinstance(param, ast.Constant) else None}
            if callee == "check" and others & names:
                continue  # a rule between settings, not a range check
            if isinstance(param, ast.Constant) and param.value in names:
                found[param.value].add(f"{_rel(path)}:{node.lineno}")
    return found


def test_each_default_is_declared_once():
    files, names = scanned_files(), setting_names()
    twice = {key: sorted(places) for key, places in declarations(files, names).items() if len(places) > 1}
    assert not twice, "the same default declared in more than one place (declare it once, import it " \
        "elsewhere):\n" + "\n".join(f"  {name} = {value!r}: {', '.join(places)}"
                                    for (name, value), places in sorted(twice.items(), key=str))


def test_each_check_is_written_once():
    files, names = scanned_files(fillers=False), setting_names()
    twice = {name: sorted(places) for name, places in hand_written_checks(files, names).items() if len(places) > 1}
    assert not twice, "the same setting checked by hand in more than one place (write one checker in " \
        "diffmine/core/settings.py and call it):\n" + "\n".join(f"  {name}: {', '.join(places)}"
                                                              for name, places in sorted(twice.items()))


def test_the_scan_finds_what_it_looks_for():
    """The scan reads the configs: it sees the published draws where they are declared, and one checker."""
    found = declarations(scanned_files(), setting_names())
    assert ("draws", 64) in found and ("clusters", 32) in found
    assert any(p.name == "settings.py" for p in scanned_files())
