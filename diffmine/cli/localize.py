"""diffmine localize: where each finding is, from the typicality map of its prompt (X-ray application)."""
from diffmine.apps.localize.config import LocalizeConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "abnormality localisation: finding maps vs boxes (AUC-PR, IoBB, pointing game), finetuned vs base"


def register(parser) -> None:
    add_config_options(parser, LocalizeConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    from pathlib import Path

    cfg = config_from_args(LocalizeConfig, args, validate=True)
    from diffmine.apps.localize.run import run_localize

    if run_localize(cfg) is not None:  # prints the boxes scored per finding and the metrics table itself
        print(f"report: {Path(cfg.out) / 'report.html'}")  # (the main process, under accelerate launch)
