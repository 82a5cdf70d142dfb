"""Shared by the one-class anomaly benchmarks (digits, MNIST): the protocol, the baselines, the table.

One-class protocol: for each class d, fit on d's training images only, score the whole test
split, anomalies = every other class. Metrics: AUROC and AUPR (anomalies positive, scikit-learn),
and precision / recall / F1 of `predict` at the detector's own threshold (the training scores'
1 - contamination quantile, PyOD's rule, the same for every method).

Headline: the `features` kind (the one the README recommends, fixed before any run), never the
best kind of a run. Intervals (95 %): a bootstrap over test images (each test image takes part in
every class's task, so the resample is shared by all classes and methods), recomputing the mean
AUROC over classes; the margin of the headline over the best classic detector is paired (same
resamples). Each run is appended to results/<benchmark>.json, its per-image scores beside it.

Classic detectors, on the flattened pixels: PyOD's IForest, OCSVM, COPOD, ECOD and KNN, and PCA
reconstruction error (`PCAReconstruction`: scikit-learn PCA fitted on the class's training images,
as many components as explain PCA_VARIANCE of their variance, a rule fixed before any run and
printed with the components it gives per class; the score is the squared distance of an image to
its reconstruction).
"""
from __future__ import annotations

import json
import time

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

METRICS = ("auroc", "aupr", "precision", "recall", "f1")
HEADLINE = "diffusion-features"  # the recommended kind: the README's figure whatever a run's ranking
CLASSIC = ("iforest", "ocsvm", "copod", "ecod", "knn-pixels", "pca-recon")
PCA_VARIANCE = 0.95  # PCA reconstruction: the components kept explain this share of the training variance


def pca_detector():
    """PCAReconstruction, a PyOD detector (defined here so PyOD is imported only when a baseline runs)."""
    from pyod.models.base import BaseDetector
    from sklearn.decomposition import PCA

    class PCAReconstruction(BaseDetector):
        """Anomaly score: squared reconstruction error of PCA fitted on the normal images, with as many
        components as explain `variance` of the training variance (chosen on the training images only).
        PyOD's conventions: the threshold is the training scores' 1 - contamination quantile."""

        def __init__(self, contamination=0.1, variance=PCA_VARIANCE):
            super().__init__(contamination=contamination)
            self.variance = variance

        def fit(self, X, y=None):
            X = np.asarray(X, dtype=np.float64)
            self.pca_ = PCA(n_components=self.variance, svd_solver="full").fit(X)
            self.n_components_ = int(self.pca_.n_components_)
            self.decision_scores_ = self.decision_function(X)
            self._process_decision_scores()
            return self

        def decision_function(self, X):
            X = np.asarray(X, dtype=np.float64)
            return np.square(X - self.pca_.inverse_transform(self.pca_.transform(X))).sum(axis=1)

    return PCAReconstruction


def metrics(is_anomaly: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> dict:
    p, r, f, _ = precision_recall_fscore_support(is_anomaly, predicted, average="binary", zero_division=0)
    return {"auroc": float(roc_auc_score(is_anomaly, scores)), "aupr": float(average_precision_score(is_anomaly, scores)),
            "precision": float(p), "recall": float(r), "f1": float(f),
            "scores": np.asarray(scores, dtype=np.float64)}  # per test image, for the intervals


def baselines(contamination: float, seed: int) -> dict:
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.ocsvm import OCSVM

    # knn on raw pixels is not one of the four: it is the features score's own method on
    # pixels instead of diffusion features, shown so that what the features add can be read off.
    return {"iforest": lambda: IForest(contamination=contamination, random_state=seed),
            "ocsvm": lambda: OCSVM(contamination=contamination),
            "copod": lambda: COPOD(contamination=contamination),
            "ecod": lambda: ECOD(contamination=contamination),
            "knn-pixels": lambda: KNN(contamination=contamination),
            "pca-recon": lambda: pca_detector()(contamination=contamination)}


def run_baselines(x_train, y_train, x_test, y_test, classes, contamination: float, seed: int) -> dict:
    """{method: {class: metrics}} on flattened pixels in [0, 1]."""
    out = {}
    flat_tr, flat_te = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    for name, make in baselines(contamination, seed).items():
        out[name] = {}
        for d in classes:
            det = make().fit(flat_tr[y_train == d])
            out[name][d] = metrics(y_test != d, det.decision_function(flat_te), det.predict(flat_te))
            if hasattr(det, "n_components_"):
                out[name][d]["n_components"] = det.n_components_
        if name == "pca-recon":
            print(f"pca-recon: components explaining {PCA_VARIANCE:.0%} of each class's training variance: "
                  + ", ".join(f"{d}: {out[name][d]['n_components']}" for d in classes), flush=True)
    return out


def table(results: dict, classes) -> str:
    """X. Wang's Table 1 layout (docs/method.md §5.3): one row per method, mean over classes; then AUROC per class."""
    lines = [f"{'Model':<28}" + "".join(f"{m.upper() if m.startswith('au') else m.capitalize():>11}" for m in METRICS)]
    for name, per in results.items():
        lines.append(f"{name:<28}" + "".join(f"{np.mean([per[d][m] for d in classes]):>11.3f}" for m in METRICS))
    lines += ["", "AUROC per class", f"{'Model':<28}" + "".join(f"{str(d):>7}" for d in classes)]
    for name, per in results.items():
        lines.append(f"{name:<28}" + "".join(f"{per[d]['auroc']:>7.3f}" for d in classes))
    return "\n".join(lines)


def intervals(results: dict, classes, y_test: np.ndarray) -> dict:
    """Mean AUROC over classes of every method with its interval, and the headline's paired margin
    over the best classic detector (best by its point value: the choice that favours the classics)."""
    from diffmine.evaluation.intervals import statistic_estimate
    from diffmine.evaluation.metrics import auroc

    units = np.arange(len(y_test))

    def mean_auroc(name, rows):
        return float(np.mean([auroc(results[name][d]["scores"][rows], (y_test != d)[rows]) for d in classes]))

    est = {name: statistic_estimate(units, lambda r, name=name: mean_auroc(name, r)) for name in results}
    out = {"mean_auroc": est}
    classic = [n for n in CLASSIC if n in results]
    if HEADLINE in results and classic:
        best = max(classic, key=lambda k: est[k]["value"])
        out["best_classic"] = best
        out["margin"] = statistic_estimate(units, lambda r: mean_auroc(HEADLINE, r) - mean_auroc(best, r))
    return out


def summary(results: dict, classes, diffusion_kinds, ci: dict) -> dict:
    mean = {name: float(np.mean([per[d]["auroc"] for d in classes])) for name, per in results.items()}
    r4 = lambda v: round(v, 4)
    out = {}
    if HEADLINE in results:
        out["diffusion_mean_auroc"] = r4(mean[HEADLINE])
        out["diffusion_mean_auroc_ci"] = [r4(x) for x in ci["mean_auroc"][HEADLINE]["ci"]]
        out["diffusion_headline_score"] = "features"
    for name in CLASSIC:
        out[f"{name.replace('-', '_')}_mean_auroc"] = r4(mean[name])
        out[f"{name.replace('-', '_')}_mean_auroc_ci"] = [r4(x) for x in ci["mean_auroc"][name]["ci"]]
    if "pca-recon" in results:
        out["pca_recon_rule"] = f"components explaining {PCA_VARIANCE:.0%} of the class's training variance"
        out["pca_recon_components"] = {str(d): results["pca-recon"][d]["n_components"] for d in classes}
    if "margin" in ci:
        out["best_classic"] = ci["best_classic"]
        out["margin_over_best_classic"] = r4(ci["margin"]["value"])
        out["margin_over_best_classic_ci"] = [r4(x) for x in ci["margin"]["ci"]]
    for k in diffusion_kinds:
        out[f"diffusion_{k}_mean_auroc"] = r4(mean[f"diffusion-{k}"])
        out[f"diffusion_{k}_mean_auroc_ci"] = [r4(x) for x in ci["mean_auroc"][f"diffusion-{k}"]["ci"]]
    return out


def run_diffusion(x_train, y_train, x_test, y_test, classes, args, work) -> tuple[dict, dict]:
    """Per class: finetune the base on the class's training images once, then score with every kind.

    The features kind needs no finetuning: it reads the base model's DIFT features as they are
    (the class's training images are its nearest-neighbour reference)."""
    from diffmine.apps.anomaly.detector import DiffusionDetector
    from diffmine.core.models import resolve_model

    out = {f"diffusion-{k}": {} for k in args.scores}
    seconds = {}
    base = str(resolve_model(args.base, "base"))
    denoising = [k for k in args.scores if k != "features"]
    for d in classes:
        start = time.time()
        normal = x_train[y_train == d]
        common = dict(contamination=args.contamination, resolution=args.resolution, seed=args.seed,
                      batch_size=args.batch_size)
        first = DiffusionDetector(base=args.base, score=denoising[0], draws=args.draws,
                                  finetune_steps=args.steps, finetune_lr=args.lr, finetune_batch=args.finetune_batch,
                                  work_dir=str(work / f"class-{d}"), **common).fit(normal) if denoising else None
        for kind in args.scores:
            det = first if first is not None and kind == first.score else DiffusionDetector(
                model=base if kind == "features" else first.model_path_, score=kind,
                draws=args.trajectory_draws if kind == "trajectory" else args.draws,
                trajectory_steps=args.trajectory_steps, trajectory_start=args.trajectory_start, **common).fit(normal)
            out[f"diffusion-{kind}"][d] = metrics(y_test != d, det.decision_function(x_test), det.predict(x_test))
        seconds[d] = round(time.time() - start, 1)
        print(f"class {d}: " + ", ".join(f"{k} {out[f'diffusion-{k}'][d]['auroc']:.3f}" for k in args.scores)
              + f" ({seconds[d]} s)", flush=True)
    return out, seconds


def run_shared(x_train, y_train, x_test, y_test, classes, args, work) -> tuple[dict, dict]:
    """One model for all classes: the base finetuned once with the class as label (and the null prompt).

    For class d the score is the detector's atypicality with normal label d, the margin
    max_{c != d} T(x|c) - T(x|d); it and the null branch's reconstruction error are read from ONE
    pass of the typicality estimator over train + test with every label (the detector's common
    draws), instead of re-scoring the test split once per class. NOT the strict one-class protocol:
    the shared model saw the other classes' training images, each under its own label.
    """
    import torch
    from PIL import Image

    from diffmine.apps.anomaly.detector import DRAW_KEY
    from diffmine.core.bundle import SDBundle
    from diffmine.core.prompts import PromptTemplate
    from finetune.train import train
    from finetune.config import TrainConfig
    from typicality.draws import make_draws
    from typicality.engine import TypicalityEstimator
    from diffmine.core.inputs import ImageInput

    start = time.time()
    labels = [str(c) for c in sorted(set(y_train.tolist()))]
    for i, (img, c) in enumerate(zip(x_train, y_train)):
        folder = work / "data" / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    model = work / "model"
    train(TrainConfig(data=str(work / "data"), out=str(model), base=str(args.base), resolution=args.resolution,
                      prompt="A handwritten digit {label}.", null_prompt="A handwritten digit.", null_rate=0.1,
                      batch_size=args.finetune_batch, lr=args.lr, max_steps=args.steps, checkpoint_every=10 ** 9,
                      seed=args.seed, samples_per_label=0,
                      adapt_vae="never"),  # the recorded figures used the base's own VAE
          progress=False)
    train_seconds = time.time() - start
    print(f"finetuned one model on {len(x_train)} images, {len(labels)} labels: {train_seconds:.0f} s", flush=True)
    bundle = SDBundle.from_pretrained(model).eval()
    est = TypicalityEstimator(bundle, PromptTemplate.load(model), draws=args.draws, seed=args.seed,
                              batch_size=args.batch_size)
    est.draw_fn = lambda _id, shape: make_draws(est.draws, shape, est.seed, DRAW_KEY, est.t_range,
                                                est.num_train_timesteps, est.schedule, est.antithetic)

    def label_scores(images):
        inp = ImageInput(images)
        T, null = [], []
        for s in range(0, len(inp), 128):
            idx = list(range(s, min(s + 128, len(inp))))
            res = est.estimate(torch.from_numpy(inp.load(args.resolution, idx)), [inp.ids[i] for i in idx],
                               [labels] * len(idx))
            T += [r.diff.astype(np.float64).mean(axis=(1, 2)) for r in res]
            null += [float(r.err_null.astype(np.float64).mean()) for r in res]
        return np.array(T), np.array(null)

    # thresholds need only each class's training scores: at most --threshold-images per class
    keep = np.concatenate([np.flatnonzero(y_train == d)[:args.threshold_images] for d in classes])
    x_train, y_train = x_train[keep], y_train[keep]
    T_tr, null_tr = label_scores(x_train)
    T_te, null_te = label_scores(x_test)
    score_seconds = time.time() - start - train_seconds
    print(f"scored {len(x_train) + len(x_test)} images x {len(labels)} labels x {args.draws} draws: "
          f"{score_seconds:.0f} s", flush=True)

    accuracy = float(np.mean(np.array(labels)[T_te.argmax(axis=1)] == y_test.astype(str)))
    print(f"the shared model as a classifier (argmax_c T(x|c), = diffmine classify --prune off): "
          f"test accuracy {accuracy:.3f}", flush=True)

    def margin(T, d):
        j = labels.index(str(d))
        others = np.delete(T, j, axis=1)
        return others.max(axis=1) - T[:, j]

    out = {"diffusion-atypicality": {}, "diffusion-reconstruction": {}}
    for d in classes:
        for kind, tr, te in (("atypicality", margin(T_tr, d), margin(T_te, d)),
                             ("reconstruction", null_tr, null_te)):
            tr = tr[y_train == d]
            threshold = np.percentile(tr, 100 * (1 - args.contamination))  # PyOD's rule
            out[f"diffusion-{kind}"][d] = metrics(y_test != d, te, (te > threshold).astype(int))
    per_class = round((time.time() - start) / len(classes), 1)
    return out, {d: per_class for d in classes}


def add_arguments(parser, resolution: int, steps: int) -> None:
    parser.add_argument("--mode", choices=("shared", "per-class"), default="per-class",
                        help="shared: one model with the class as label (fast; not strictly one-class); "
                             "per-class: the strict protocol, one finetune per class")
    parser.add_argument("--base", default="tiny", help="model finetuned per class (tiny = the shipped towns model)")
    parser.add_argument("--resolution", type=int, default=resolution, help="images are upsampled to this size")
    parser.add_argument("--steps", type=int, default=steps, help="finetuning steps per class")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-batch", type=int, default=16)
    parser.add_argument("--draws", type=int, default=2, help="draws of the reconstruction/atypicality scores "
                        "(antithetic pairs; every image shares them)")
    parser.add_argument("--trajectory-draws", type=int, default=1)
    parser.add_argument("--trajectory-steps", type=int, default=4)
    parser.add_argument("--trajectory-start", type=float, default=0.3)
    parser.add_argument("--scores", nargs="+", default=["reconstruction", "atypicality", "trajectory", "features"])
    parser.add_argument("--contamination", type=float, default=0.1)
    parser.add_argument("--threshold-images", type=int, default=40,
                        help="shared mode: training images per class scored for the threshold")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the stratified train/test halves (the data set itself is fixed)")
    parser.add_argument("--classes", type=int, nargs="*", default=None, help="a subset of classes (quick runs)")
    parser.add_argument("--work", default=None, help="folder for the per-class models (default: a temp folder)")
    from benchmarks.records import protocol_argument

    protocol_argument(parser)


def report(results: dict, classes, kinds, seconds: dict, started: float, y_test: np.ndarray, name: str,
           protocol: dict) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.records import save_run

    print()
    print(table(results, classes))
    ci = intervals(results, classes, y_test)
    print("\nmean AUROC over classes, 95 % interval (bootstrap over test images):")
    for m, e in ci["mean_auroc"].items():
        print(f"  {m:<28}{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]")
    if "margin" in ci:
        e = ci["margin"]
        print(f"  features - {ci['best_classic']} (best classic): {e['value']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]"
              f" ({'interval excludes 0' if e['ci'][0] > 0 or e['ci'][1] < 0 else 'interval includes 0'})")
    wall = time.time() - started
    print(f"\nseconds per class (finetune + scoring): {json.dumps({str(k): v for k, v in seconds.items()})}")
    print(f"wall time: {wall / 60:.1f} min")
    last = {**summary(results, classes, kinds, ci), "wall_minutes": round(wall / 60, 1)}
    items = [{"test_image": i, "label": int(y_test[i]),
              **{f"{m}@{d}": float(results[m][d]["scores"][i]) for m in results for d in classes}}
             for i in range(len(y_test))]
    per_class = {m: {str(d): {k: per[d][k] for k in METRICS} for d in classes} for m, per in results.items()}
    save_run(name, {**last, "per_class": per_class}, items, protocol=protocol, protocol_file=protocol.get("protocol"))
    print(json.dumps(last))
