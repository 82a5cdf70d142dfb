"""diffmine typicality: per-pixel typicality maps T(x|c) into a resumable store."""
from typicality.config import TypicalityConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "per-pixel typicality maps T(x|c) of every image (docs/method.md §2)"


def register(parser) -> None:
    add_config_options(parser, TypicalityConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    cfg = config_from_args(TypicalityConfig, args, validate=True)
    from typicality.engine import run_typicality

    print(f"typicality written to {run_typicality(cfg)}")
