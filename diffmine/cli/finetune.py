"""diffmine finetune: adapt a Stable Diffusion model to labeled images."""
from finetune.config import TrainConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "adapt a Stable Diffusion model to labeled images (docs/method.md §1)"


def register(parser) -> None:
    add_config_options(parser, TrainConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    cfg = config_from_args(TrainConfig, args, validate=True)
    from finetune.train import train

    print(f"model written to {train(cfg)}")
