"""diffmine demo: the whole pipeline on the embedded towns dataset and the shipped model."""
from diffmine.apps.demo.run import DemoConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "the whole pipeline on the embedded dataset and shipped model (make demo)"


def register(parser) -> None:
    add_config_options(parser, DemoConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    from diffmine.apps.demo.run import run_demo

    run_demo(config_from_args(DemoConfig, args))
