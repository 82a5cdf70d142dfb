"""diffmine mine: typical patches -> features -> ranked clusters -> report."""
from mining.config import MineConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "typical patches -> DIFT features -> ranked clusters -> report.html (docs/method.md §3-4)"


def register(parser) -> None:
    add_config_options(parser, MineConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    from pathlib import Path

    cfg = config_from_args(MineConfig, args, validate=True)
    from mining.mine import run_mining

    print(f"report: {Path(run_mining(cfg)) / 'report.html'}")
