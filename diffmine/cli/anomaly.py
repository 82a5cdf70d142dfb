"""diffmine anomaly fit | score: a PyOD-compatible anomaly detector from a diffusion model.

PyOD is the `anomaly` extra: only this command imports it (when it runs), so every other
command starts without it, and this one says in one line what to install."""
from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "anomaly detection: `fit` on normal images, `score` new ones (higher = more anomalous)"
SUBCOMMANDS = {"fit": AnomalyFitConfig, "score": AnomalyScoreConfig}
MISSING_PYOD = "PyOD is not installed; install the anomaly extra: pip install -e .[anomaly]"


def register(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_config_options(sub.add_parser("fit", help="fit the detector on normal images"), AnomalyFitConfig)
    add_config_options(sub.add_parser("score", help="score images with a fitted detector"), AnomalyScoreConfig)
    parser.set_defaults(run=run)


def require_pyod() -> None:
    """DataError (one line, exit status 2) when the `anomaly` extra is missing."""
    import importlib

    from diffmine.core.errors import DataError

    try:
        importlib.import_module("pyod")
    except ImportError:
        raise DataError(MISSING_PYOD) from None


def run(args) -> None:
    cfg = config_from_args(SUBCOMMANDS[args.action], args, validate=True)
    require_pyod()
    from diffmine.apps.anomaly.run import fit_detector, score_images

    if args.action == "fit":
        det = fit_detector(cfg)
        print(f"detector ({cfg.score}) fitted on {len(det.decision_scores_)} images, threshold "
              f"{det.threshold_:.6g}, written to {cfg.out}")
    else:
        res = score_images(cfg)
        if res is not None:  # under `accelerate launch`: the main process wrote the files
            print(f"{res['outliers']} of {res['images']} images above the threshold {res['threshold']:.6g}; "
                  f"scores in {res['csv']}")
