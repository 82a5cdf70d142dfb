"""diffmine classify: each image's label is the one it is most typical of."""
from diffmine.apps.classify.config import ClassifyConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "classify images by argmax over labels of T(x|c), with adaptive pruning and a label audit"


def register(parser) -> None:
    add_config_options(parser, ClassifyConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    cfg = config_from_args(ClassifyConfig, args, validate=True)
    from diffmine.apps.classify.run import run_classify

    res = run_classify(cfg)
    if res is None:  # under `accelerate launch`: the main process wrote the files
        return
    acc = res.get("accuracy")
    print(f"{res.get('images', '?')} images" + (f", accuracy {acc:.4f}" if isinstance(acc, float) else "")
          + f", {res['images_per_s']:.2f} images/s; written to {cfg.out}")
