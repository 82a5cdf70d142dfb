"""diffmine anomaly fit | score: a PyOD-compatible anomaly detector from a diffusion model.

PyOD is the `anomaly` extra: only this command imports it (when it runs), so every other
command starts without it, and this one says in one line what to install."""
from diffmine.cli.commands import Command

HELP = "anomaly detection: `fit` on normal images, `score` new ones (higher = more anomalous)"
MISSING_PYOD = "PyOD is not installed; install the anomaly extra: pip install -e .[anomaly]"


def require_pyod() -> None:
    """DataError (one line, exit status 2) when the `anomaly` extra is missing."""
    import importlib

    from diffmine.core.errors import DataError

    try:
        importlib.import_module("pyod")
    except ImportError:
        raise DataError(MISSING_PYOD) from None


def _fitted(cfg, det) -> str:
    return (f"detector ({cfg.score}) fitted on {len(det.decision_scores_)} images, threshold "
            f"{det.threshold_:.6g}, written to {cfg.out}")


def _scored(cfg, res: dict) -> str:
    return (f"{res['outliers']} of {res['images']} images above the threshold {res['threshold']:.6g}; "
            f"scores in {res['csv']}")


ACTIONS = {
    "fit": Command("diffmine.apps.anomaly.config.AnomalyFitConfig", "fit the detector on normal images",
                   "diffmine.apps.anomaly.run.fit_detector", _fitted, check=require_pyod),
    "score": Command("diffmine.apps.anomaly.config.AnomalyScoreConfig", "score images with a fitted detector",
                     "diffmine.apps.anomaly.run.score_images", _scored, check=require_pyod),
}


def register(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, command in ACTIONS.items():
        command.register(sub.add_parser(action, help=command.help))  # each action runs its own row
