"""The documentation and the references to it: fast checks, no model runs.

1. Every `docs/method.md §N` (or `§N.M`) citation, in code, docs, notebooks and the Makefile, names
   a heading of docs/method.md numbered exactly §N.
2. No text cites a file that is not in the repository (notes kept outside it, relative links,
   repository paths in docs/*.md).
3. `--help` of every command states each option's default once, in one form: "(default: ...)".
4. The parameter tables of docs/method.md state the code's defaults, and list every flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

from diffmine.cli import build_parser
from diffmine.cli.options import DEFAULT_MARK, _show, flag
from diffmine.core.settings import fields

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOC = ROOT / "docs" / "method.md"
CODE_DIRS = ("diffmine", "finetune", "typicality", "mining", "benchmarks", "tests")
REPO_DIRS = CODE_DIRS + ("assets", "docs", "notebooks")
SECTION = "\u00a7"  # the section sign, spelt out so that this file cites no section itself

# `docs/method.md §3`, `§5.1`, a range `§3-4` (both ends must resolve); `§n` (a placeholder) is no citation
CITATION = re.compile(r"method\.md\s*" + SECTION + r"\s*(\d+(?:\.\d+)?)(?:\s*[-\u2013]\s*(\d+(?:\.\d+)?))?")
HEADING = re.compile(r"^#{1,6}[ \t]+" + SECTION + r"(\d+(?:\.\d+)*)(?=[ \t]|$)", re.M)
EXPECTED_SECTIONS = ["1 Finetuning", "2 Typicality", "3 Mining", "4 Features and clustering", "5 Applications",
                     "6 Where this implementation differs from the published code"]


def _text(path: Path) -> str:
    """A file's text; a notebook's cells joined (its JSON may escape non-ASCII characters)."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        cells = json.loads(raw).get("cells", [])
        return "\n".join("".join(c.get("source", [])) for c in cells)
    return raw


def _files(patterns_in_root=("README.md", "Makefile"), code=True, notebooks=True) -> list[Path]:
    out = [ROOT / p for p in patterns_in_root if (ROOT / p).is_file()]
    out += sorted((ROOT / "docs").glob("*.md"))
    if notebooks:
        out += sorted((ROOT / "notebooks").glob("*.ipynb"))
    if code:
        for d in CODE_DIRS:
            out += sorted(p for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- 1. citations of docs/method.md resolve to its headings ---------------------------------------
def section_numbers(markdown: str) -> set[str]:
    """The numbers of the headings that start with the section sign: {"1", "2", "5.1", ...}."""
    return set(HEADING.findall(markdown))


def unresolved_citations(text: str, sections: set[str]) -> list[str]:
    """Each citation in `text` whose section number (or either end of a range) is not a heading."""
    bad = []
    for m in CITATION.finditer(text):
        if any(n is not None and n not in sections for n in m.groups()):
            bad.append(m.group(0))
    return bad


def test_method_doc_has_the_six_sections():
    text = METHOD_DOC.read_text(encoding="utf-8")
    tops = re.findall(r"^## " + SECTION + r"(.+?)\s*$", text, re.M)
    assert tops == EXPECTED_SECTIONS


@pytest.mark.parametrize("path", _files(), ids=_rel)
def test_citations_resolve(path):
    sections = section_numbers(METHOD_DOC.read_text(encoding="utf-8"))
    assert unresolved_citations(_text(path), sections) == []


def test_citations_are_found():
    """The code does cite the document (the scan above is not vacuous), section by section."""
    cited = set()
    for path in _files():
        for m in CITATION.finditer(_text(path)):
            cited.update(n for n in m.groups() if n)
    assert {"1", "2", "3", "4", "5", "6"} <= cited


def test_citation_check_can_fail():
    sections = section_numbers("# Title\n## " + SECTION + "1 One\n### " + SECTION + "5.1 Sub\n## " + SECTION
                               + "10 Ten\n## About " + SECTION + "7\n")
    assert sections == {"1", "5.1", "10"}  # a heading must START with its number
    fake = ("see docs/method.md " + SECTION + "99; docs/method.md " + SECTION + "1 is fine, docs/method.md "
            + SECTION + "5.2 is not, docs/method.md " + SECTION + "1-7 neither, docs/method.md " + SECTION + "n is no "
            "citation, nor is docs/method.md " + SECTION + "7 of the text")
    assert unresolved_citations(fake, sections) == [
        "method.md " + SECTION + "99", "method.md " + SECTION + "5.2", "method.md " + SECTION + "1-7",
        "method.md " + SECTION + "7"]


# -- 2. no text cites a file that is not in the repository -----------------------------------------
# Notes and papers kept beside the repository, not in it: their names are built here piece by piece.
OUTSIDE = [
    re.compile(r"\b" + "METHOD" + r"\.md\b"),
    re.compile(r"\b" + "ARCHITECTURE" + r"\.md\b"),
    re.compile(r"\b" + "seed" + r"s?\s+0\d\d\b", re.I),
    re.compile(r"(?<![\w-])" + "shared" + r"/(?:" + "METHOD|ARCHITECTURE|seeds|hooks" + r")\b"),
    re.compile(r"/" + "work" + r"/"),
    re.compile(r"\b" + "issue" + r"\s+#?\d+", re.I),
]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REPO_PATH = re.compile(r"`((?:" + "|".join(REPO_DIRS) + r")/[\w./*-]*[\w*])")


def outside_references(text: str) -> list[str]:
    return [m.group(0) for pat in OUTSIDE for m in pat.finditer(text)]


def missing_links(markdown: str, base: Path) -> list[str]:
    """Relative markdown links `[..](path)` whose target (anchor stripped) does not exist."""
    bad = []
    for target in LINK.findall(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto:, an anchor in the same page
        path = target.split("#", 1)[0]
        if path and not (base / path).exists():
            bad.append(target)
    return bad


def missing_repo_paths(markdown: str) -> list[str]:
    """Backticked repository paths (`diffmine/...`, `benchmarks/...`; globs allowed) that match no file."""
    return [p for p in REPO_PATH.findall(markdown) if not any(ROOT.glob(p))]


@pytest.mark.parametrize("path", _files(), ids=_rel)
def test_no_reference_outside_the_repository(path):
    assert outside_references(_text(path)) == []


@pytest.mark.parametrize("path", [p for p in _files(code=False, notebooks=False) if p.suffix == ".md"], ids=_rel)
def test_markdown_links_exist(path):
    assert missing_links(path.read_text(encoding="utf-8"), path.parent) == []


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")), ids=_rel)
def test_docs_repository_paths_exist(path):
    assert missing_repo_paths(path.read_text(encoding="utf-8")) == []


def test_reference_checks_can_fail(tmp_path):
    fake = ("as " + "METHOD" + ".md says; see " + "ARCHITECTURE" + ".md, " + "Seed" + " 004, " + "shared"
            + "/seeds/x.txt, " + "Issue" + " 3 item 2; shared/characteristic and docs/method.md are fine")
    assert len(outside_references(fake)) == 5
    (tmp_path / "there.md").write_text("x")
    md = "[a](there.md) [b](there.md#part) [c](https://example.org/x) [d](#top) ![e](gone.png) [f](gone/x.md#y)"
    assert missing_links(md, tmp_path) == ["gone.png", "gone/x.md#y"]
    assert missing_repo_paths("`diffmine/cli/options.py`, `diffmine/apps/*/config.py`, `mining/nosuch.py`") \
        == ["mining/nosuch.py"]


# -- 3. --help states each default once ----------------------------------------------------------
def _parsers(parser: argparse.ArgumentParser, path=("diffmine",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _option_helps(parser: argparse.ArgumentParser):
    """(option, its help line as --help prints it, before wrapping) for every option of `parser`."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.help not in (None, argparse.SUPPRESS):
            yield action.option_strings[-1], " ".join(formatter._expand_help(action).split())


def default_problems(help_line: str) -> list[str]:
    """What is wrong with how a help line states its default (empty when it says it once, as "(default: ...")."""
    problems = []
    if help_line.count(DEFAULT_MARK) > 1:
        problems.append(f"{help_line.count(DEFAULT_MARK)} times {DEFAULT_MARK!r}")
    other = len(re.findall(r"\bdefaults?\b", help_line, re.I)) - help_line.count(DEFAULT_MARK)
    if other > 0:
        problems.append("'default' in another form")
    return problems


def test_every_command_is_checked():
    names = [name for name, _ in _parsers(build_parser())]
    assert {"diffmine finetune", "diffmine typicality", "diffmine mine", "diffmine localize", "diffmine translate",
            "diffmine changes", "diffmine anomaly fit", "diffmine anomaly score", "diffmine classify",
            "diffmine demo", "diffmine assets"} <= set(names)


@pytest.mark.parametrize("command", [name for name, _ in _parsers(build_parser())])
def test_help_states_each_default_once(command):
    parser = dict(_parsers(build_parser()))[command]
    assert parser.format_help()  # it renders
    bad = {opt: default_problems(line) for opt, line in _option_helps(parser) if default_problems(line)}
    assert bad == {}
    for opt, line in _option_helps(parser):
        if opt not in ("--help", "--config"):
            assert line.count(DEFAULT_MARK) == 1 or line.endswith("(required)") or "(required) [" in line, \
                f"{command} {opt} states no default: {line}"


def test_default_check_can_fail():
    assert default_problems("steps (default: 1000)") == []
    assert default_problems("prompt (default: the preset's) (default: none)") == ["2 times '(default:'"]
    assert default_problems("VAE steps (tiny-scratch only; default 1000) (default: none)") == [
        "'default' in another form"]
    assert default_problems("a folder") == []


# -- 4. the parameter tables of docs/method.md agree with the code ----------------------------------
TABLE_MARK = re.compile(r"<!-- config: ([\w.]+) -->\s*\n((?:\|.*\n?)+)")


def doc_tables() -> dict[str, dict[str, str]]:
    """{config class path: {flag: the default cell}}, merged over the tables marked for that class."""
    tables: dict[str, dict[str, str]] = {}
    for cls_path, body in TABLE_MARK.findall(METHOD_DOC.read_text(encoding="utf-8")):
        rows = tables.setdefault(cls_path, {})
        for line in body.strip().splitlines()[2:]:  # header and rule
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            opt = cells[0].strip("`")
            assert opt not in rows, f"{opt} twice in the tables of {cls_path}"
            rows[opt] = cells[1]
    return tables


def _load(cls_path: str):
    module, name = cls_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _same(cell: str, value: str) -> bool:
    a, b = cell.split(), value.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        try:
            if float(x) != float(y):
                return False
        except ValueError:
            if x.lower() != y.lower():
                return False
    return True


def table_problems(cls, rows: dict[str, str], shared: set[str]) -> list[str]:
    problems = []
    cli = {flag(f.name): f for f in fields(cls) if f.metadata.get("cli", True) and f.name not in shared}
    for opt in sorted(set(cli) - set(rows)):
        problems.append(f"{opt} is in no table")
    for opt in sorted(set(rows) - set(cli)):
        problems.append(f"{opt} is no flag of {cls.__name__}")
    for opt in sorted(set(cli) & set(rows)):
        f, cell = cli[opt], rows[opt]
        if f.metadata.get("required"):
            ok = cell == "required"
            want = "required"
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if isinstance(default, str) and Path(default).is_absolute() and Path(default).is_relative_to(ROOT):
                default = str(Path(default).relative_to(ROOT))  # a folder of the repository, as the docs name it
            want = _show(default)
            m = re.match(r"^`([^`]*)`", cell)
            ok = bool(m) and _same(m.group(1), want)
        if not ok:
            problems.append(f"{opt}: the table says {cell!r}, the code {want!r}")
    return problems


def test_doc_tables_state_the_code_defaults():
    from diffmine.core.runtime_settings import RuntimeSettings

    tables = doc_tables()
    runtime = "diffmine.core.runtime_settings.RuntimeSettings"
    assert runtime in tables
    shared = {f.name for f in fields(RuntimeSettings)}
    problems = table_problems(RuntimeSettings, tables[runtime], set())
    for cls_path, rows in tables.items():
        if cls_path != runtime:
            cls = _load(cls_path)
            problems += [f"{cls.__name__} {p}" for p in
                         table_problems(cls, rows, shared if issubclass(cls, RuntimeSettings) else set())]
    assert problems == []


def test_every_command_config_has_a_table():
    from diffmine.cli.commands import config_classes

    classes = config_classes()
    assert {name.split()[0] for name in classes} == {
        "finetune", "typicality", "mine", "localize", "translate", "changes", "anomaly", "classify", "demo", "assets"}
    documented = set(doc_tables())
    for name, cls in classes.items():
        assert f"{cls.__module__}.{cls.__name__}" in documented, f"diffmine {name}: {cls.__name__}"


def test_table_check_can_fail():
    @dataclasses.dataclass
    class Fake:
        a: int = dataclasses.field(default=5, metadata={"help": ""})
        b: str = dataclasses.field(default=None, metadata={"help": "", "required": True})
        c: float = dataclasses.field(default=1e-4, metadata={"help": ""})
        d: bool = dataclasses.field(default=False, metadata={"help": "", "cli": False})

    rows = {"--a": "`6`", "--b": "`x`", "--c": "`0.0001` (lr)", "--e": "`1`"}
    assert table_problems(Fake, rows, set()) == [
        "--e is no flag of Fake", "--a: the table says '`6`', the code '5'",
        "--b: the table says '`x`', the code 'required'"]
