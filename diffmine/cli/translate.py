"""diffmine translate: each image under another label (Plug-and-Play or SDEdit)."""
from diffmine.apps.translate.config import TranslateConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "translate images to other labels: Plug-and-Play (DDIM inversion + feature injection) or SDEdit"


def register(parser) -> None:
    add_config_options(parser, TranslateConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    cfg = config_from_args(TranslateConfig, args, validate=True)
    from diffmine.apps.translate.run import run_translate

    print(f"translations: {run_translate(cfg) / 'index.html'}")
