"""The `diffmine` command: the subcommands are the rows of one table (`commands.py`), each parsing its
config and calling the function the tests also call. Bad input ends with one line on stderr and exit
status 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from diffmine.cli.commands import COMMANDS, Command, own_module


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmine", description="Visual data mining with diffusion models.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in COMMANDS.items():
        row = entry if isinstance(entry, Command) else own_module(entry)  # a command that does more
        help_line = row.help if isinstance(row, Command) else row.HELP
        row.register(sub.add_parser(name, help=help_line, description=help_line))
    return p


def _quiet() -> None:
    """Keep the terminal for what matters: library chatter that is harmless here is silenced.
    Environment variables, read by diffusers and transformers when a command imports them: a bad
    flag or --help answers without importing either."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"  # one line, no source echo
    for lib in ("diffusers", "transformers"):  # already imported (a notebook, the tests): set it there too
        if lib in sys.modules:
            importlib.import_module(f"{lib}.utils.logging").set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    from diffmine.core.errors import DataError

    from diffmine.cli.options import error_line

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet()
    try:
        args.run(args)
    except DataError as exc:  # bad input: one clear line, no traceback
        print(f"diffmine {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0
