"""diffmine anomaly fit | score: a PyOD-compatible anomaly detector from a diffusion model."""
from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig

from diffmine.cli.options import add_config_options, config_from_args

HELP = "anomaly detection: `fit` on normal images, `score` new ones (higher = more anomalous)"
SUBCOMMANDS = {"fit": AnomalyFitConfig, "score": AnomalyScoreConfig}


def register(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_config_options(sub.add_parser("fit", help="fit the detector on normal images"), AnomalyFitConfig)
    add_config_options(sub.add_parser("score", help="score images with a fitted detector"), AnomalyScoreConfig)
    parser.set_defaults(run=run)


def run(args) -> None:
    from diffmine.apps.anomaly.run import fit_detector, score_images

    if args.action == "fit":
        cfg = config_from_args(AnomalyFitConfig, args)
        det = fit_detector(cfg)
        print(f"detector ({cfg.score}) fitted on {len(det.decision_scores_)} images, threshold "
              f"{det.threshold_:.6g}, written to {cfg.out}")
    else:
        cfg = config_from_args(AnomalyScoreConfig, args)
        res = score_images(cfg)
        print(f"{res['outliers']} of {res['images']} images above the threshold {res['threshold']:.6g}; "
              f"scores in {res['csv']}")
