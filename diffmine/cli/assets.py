"""diffmine assets: regenerate the embedded dataset and retrain the shipped model from its recipe."""
from diffmine.apps.demo.run import AssetsConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "regenerate the embedded dataset and retrain the shipped model (make assets)"


def register(parser) -> None:
    add_config_options(parser, AssetsConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    from diffmine.apps.demo.run import build_assets

    build_assets(config_from_args(AssetsConfig, args))
