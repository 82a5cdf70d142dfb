"""diffmine changes: the changes a translation makes consistently, mined by co-typicality."""
from diffmine.apps.changes.config import ChangesConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "consistent changes across translations: co-typicality -> patch sequences -> clusters -> report"


def register(parser) -> None:
    add_config_options(parser, ChangesConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    cfg = config_from_args(ChangesConfig, args, validate=True)
    from diffmine.apps.changes.run import run_changes

    out = run_changes(cfg)
    if out is not None:  # the main process, under accelerate launch
        print(f"report: {out / 'report.html'}")
