"""Command-line options generated from a stage's config dataclass, so flags and API never disagree.

Each field becomes `--field-name` with the field's help line and default; booleans get
`--x/--no-x`; `--config FILE` (JSON or TOML, e.g. a run's own config.json) supplies values that
flags given on the command line override. A flag left out leaves the config's value alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from diffmine.core.errors import DataError
from diffmine.core.settings import ConfigError, base_type, field_types, fields, from_dict, read_config_file

DEFAULT_MARK = "(default:"
CONFIG_FLAG_HELP = "JSON or TOML file of settings (e.g. a run's own config.json); flags override it"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def add_config_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One option per CLI field of `cls`, plus --config."""
    types = field_types(cls)
    from diffmine.core.runtime_settings import RuntimeSettings

    shared = {f.name for f in fields(RuntimeSettings)} if issubclass(cls, RuntimeSettings) else set()
    # a command's own options first, then the runtime's (--device, --dtype) that every command shares
    for f in sorted(fields(cls), key=lambda f: f.name in shared):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        tp, _ = base_type(types[f.name])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = meta.get("help") or ""
        if meta.get("required"):
            help_text += " (required)"
        elif DEFAULT_MARK not in help_text:  # a derived default (None) is described by the help line itself
            help_text += f" {DEFAULT_MARK} {_show(default)})"
        if meta.get("source"):
            help_text += f" [{meta['source']}]"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)
            kw.update(nargs=len(inner), type=inner[0])
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
        else:
            kw["type"] = tp
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
        parser.add_argument(flag(f.name), **kw)
    parser.add_argument("--config", default=None, metavar="FILE", help=CONFIG_FLAG_HELP)


def config_from_args(cls, args: argparse.Namespace, validate: bool = False):
    """The config: --config file first, then every flag given on the command line. validate=True (the
    commands): checked here, so a bad setting is reported before the command imports torch and its models."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    path = getattr(args, "config", None)
    from_file = read_config_file(path) if path else {}
    try:
        cfg = from_dict(cls, {**from_file, **given}, str(path) if path else cls.__name__)
        if validate and hasattr(cfg, "validate"):
            cfg.validate()
    except ConfigError as exc:
        if exc.param in from_file and exc.param not in given:  # the user wrote it in the file, not as a flag
            raise DataError(f"{path}: {exc.param} {exc.detail}") from None
        raise
    return cfg


def error_line(exc: Exception) -> str:
    """A ConfigError names its config field; on the command line the user knows it as a flag."""
    if isinstance(exc, ConfigError):
        return exc.for_flag(flag(exc.param))
    return str(exc)
