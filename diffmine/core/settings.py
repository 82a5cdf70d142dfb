"""Settings as data: every stage's options are one dataclass, each default written once.

A stage declares its settings with `option(...)` fields; the CLI generates its flags from them
(help text and default included), `load_config` reads a JSON/TOML file with overrides on top,
and `save_config` writes the resolved settings beside a run's output so it can be repeated:

    @dataclass
    class MineConfig:
        patch: int | None = option(None, "patch size in px (default: 50 px at 256 px)", source="docs/method.md §3")

Library code validates with `check(...)`, which raises `ConfigError` naming the parameter
(`patch`); the CLI turns the name into its flag (`--patch`).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from diffmine.core.errors import DataError

C = TypeVar("C")
CONFIG_FILE = "config.json"
LABEL_COLUMN = "label"  # the label column of metadata.csv/jsonl, unless a command is told another


class ConfigError(DataError):
    """A bad setting; `param` is the config field it concerns."""

    def __init__(self, param: str, message: str):
        self.param = param
        self.detail = message
        super().__init__(f"{param} {message}")

    def for_flag(self, flag: str) -> str:
        return f"{flag} {self.detail}"


def option(default: Any = dataclasses.MISSING, help: str = "", *, source: str | None = None,
           choices: Sequence[Any] | None = None, required: bool = False, resume_key: bool = False,
           cli: bool = True, default_factory: Callable[[], Any] | None = None, metavar: str | None = None):
    """A config field with its help line. `source` names where the default comes from (docs/method.md §n);
    `resume_key` marks a setting that changes what a run computes: a run resumes (a store, a checkpoint,
    kept outputs) only under the same value (`resume_keys`); `cli=False` keeps a field out of the command
    line (Python-only knobs)."""
    meta = {"help": help, "source": source, "choices": tuple(choices) if choices else None,
            "required": required, "resume_key": resume_key, "cli": cli, "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if required and default is dataclasses.MISSING:
        default = None
    return dataclasses.field(default=default, metadata=meta)


def skip_bad_option(also: str = ""):
    """The one `--skip-bad` of every command that reads images (`also`: what else that command skips)."""
    return option(False, "skip bad inputs (unreadable images; metadata rows naming a missing file or with an "
                  f"empty label{'; ' + also if also else ''}) with one warning listing them, instead of stopping")


def defaults(cls) -> dict[str, Any]:
    """Each field's default, for code that takes the same settings as keyword arguments."""
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in fields(cls)}


def fields(cls_or_obj) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls_or_obj)


def field_types(cls) -> dict[str, Any]:
    """Resolved annotations (configs use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def base_type(tp) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _coerce(cls, name: str, value):
    """JSON/TOML values to the field's type (lists to tuples), with one-line errors."""
    tp, optional = base_type(field_types(cls)[name])
    if value is None:
        return None
    origin = typing.get_origin(tp)
    try:
        if origin is tuple:
            inner = typing.get_args(tp)
            kind = inner[0] if inner else (lambda v: v)
            return tuple(kind(v) for v in value)
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise TypeError
            return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def from_dict(cls: type[C], values: dict, source: str = "settings") -> C:
    """Build `cls` from a mapping, refusing unknown keys (a typo should not pass silently)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML file of settings (a run's own config.json works)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: config file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise DataError(f"{path}: not a valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} "
                        f"config ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: a config file holds one object of settings")
    values.pop("diffmine_config", None)  # the header save_config writes
    return values


def load_config(cls: type[C], path: str | Path | None = None, **overrides) -> C:
    """Settings from `path` (JSON/TOML) with `overrides` on top; both checked against `cls`'s fields."""
    values = read_config_file(path) if path else {}
    values.update(overrides)
    return from_dict(cls, values, str(path) if path else cls.__name__)


def to_dict(cfg) -> dict:
    """Plain JSON-ready values (tuples as lists, paths as strings)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg)}


def save_config(cfg, folder: str | Path, name: str = CONFIG_FILE) -> Path:
    """Write the resolved settings beside a run's output (atomically); `--config` reads it back."""
    from diffmine.core.files import write_json

    path = Path(folder, name)
    write_json(path, {"diffmine_config": type(cfg).__name__, **to_dict(cfg)})
    return path


def resume_keys(cls) -> tuple[str, ...]:
    """The fields marked `resume_key`, in field order: what a run must agree on to resume an earlier one's work."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("resume_key"))


# -- validation helpers: each raises ConfigError naming the parameter -----------------------
def check(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise ConfigError(param, message)


def check_positive(cfg, names: Iterable[str], minimum: float = 1) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None:
            check(value >= minimum, name, f"must be >= {minimum}, got {value}")


def check_range(cfg, name: str, low: float, high: float, closed: str = "both") -> None:
    """`closed`: which ends are allowed ("both", "left", "right", "neither")."""
    value = getattr(cfg, name)
    if value is None:
        return
    ok_low = value >= low if closed in ("both", "left") else value > low
    ok_high = value <= high if closed in ("both", "right") else value < high
    lo = "[" if closed in ("both", "left") else "("
    hi = "]" if closed in ("both", "right") else ")"
    check(ok_low and ok_high, name, f"must be in {lo}{low}, {high}{hi}, got {value}")


def check_t_range(t_range, param: str = "t_range") -> None:
    """The one check of a timestep range given as fractions of T: two of them, 0 <= LOW < HIGH <= 1."""
    values = tuple(t_range)
    ok = len(values) == 2 and 0.0 <= values[0] < values[1] <= 1.0
    check(ok, param, f"must be two fractions 0 <= LOW < HIGH <= 1, got {' '.join(map(str, values))}")


def check_choice(cfg, name: str) -> None:
    choices = next(f.metadata.get("choices") for f in fields(cfg) if f.name == name)
    value = getattr(cfg, name)
    if value is None and base_type(field_types(type(cfg))[name])[1]:
        return  # an optional setting left unset
    if choices and value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_required(cfg) -> None:
    for f in fields(cfg):
        if f.metadata.get("required") and getattr(cfg, f.name) in (None, ""):
            raise ConfigError(f.name, "is required")
