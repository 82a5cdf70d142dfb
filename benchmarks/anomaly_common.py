"""Shared by the one-class anomaly benchmarks (digits, MNIST): the protocol, the baselines, the table.

One-class protocol: for each class d, fit on d's training images only, score the whole test
split, anomalies = every other class. Metrics: AUROC and AUPR (anomalies positive, scikit-learn),
and precision / recall / F1 of `predict` at the detector's own threshold (the training scores'
1 - contamination quantile, PyOD's rule, the same for every method).
"""
from __future__ import annotations

import json
import time

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

METRICS = ("auroc", "aupr", "precision", "recall", "f1")


def metrics(is_anomaly: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> dict:
    p, r, f, _ = precision_recall_fscore_support(is_anomaly, predicted, average="binary", zero_division=0)
    return {"auroc": float(roc_auc_score(is_anomaly, scores)), "aupr": float(average_precision_score(is_anomaly, scores)),
            "precision": float(p), "recall": float(r), "f1": float(f)}


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
            "knn-pixels": lambda: KNN(contamination=contamination)}


def run_baselines(x_train, y_train, x_test, y_test, classes, contamination: float, seed: int) -> dict:
    """{method: {class: metrics}} on flattened pixels in [0, 1]."""
    out = {}
    flat_tr, flat_te = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    for name, make in baselines(contamination, seed).items():
        out[name] = {}
        for d in classes:
            det = make().fit(flat_tr[y_train == d])
            out[name][d] = metrics(y_test != d, det.decision_function(flat_te), det.predict(flat_te))
    return out


def table(results: dict, classes) -> str:
    """Seed 000's Table 1 layout (one row per method, mean over classes), then AUROC per class."""
    lines = [f"{'Model':<28}" + "".join(f"{m.upper() if m.startswith('au') else m.capitalize():>11}" for m in METRICS)]
    for name, per in results.items():
        lines.append(f"{name:<28}" + "".join(f"{np.mean([per[d][m] for d in classes]):>11.3f}" for m in METRICS))
    lines += ["", "AUROC per class", f"{'Model':<28}" + "".join(f"{str(d):>7}" for d in classes)]
    for name, per in results.items():
        lines.append(f"{name:<28}" + "".join(f"{per[d]['auroc']:>7.3f}" for d in classes))
    return "\n".join(lines)


def summary(results: dict, classes, diffusion_kinds) -> dict:
    mean = {name: float(np.mean([per[d]["auroc"] for d in classes])) for name, per in results.items()}
    best = max(diffusion_kinds, key=lambda k: mean[f"diffusion-{k}"])
    return {"diffusion_mean_auroc": round(mean[f"diffusion-{best}"], 4),
            "iforest_mean_auroc": round(mean["iforest"], 4), "ocsvm_mean_auroc": round(mean["ocsvm"], 4),
            "copod_mean_auroc": round(mean["copod"], 4), "ecod_mean_auroc": round(mean["ecod"], 4),
            "knn_pixels_mean_auroc": round(mean["knn-pixels"], 4),
            "diffusion_best_score": best,
            **{f"diffusion_{k}_mean_auroc": round(mean[f"diffusion-{k}"], 4) for k in diffusion_kinds}}


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
                      seed=args.seed, samples_per_label=0), progress=False)
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
    parser.add_argument("--classes", type=int, nargs="*", default=None, help="a subset of classes (quick runs)")
    parser.add_argument("--work", default=None, help="folder for the per-class models (default: a temp folder)")


def report(results: dict, classes, kinds, seconds: dict, started: float) -> None:
    print()
    print(table(results, classes))
    wall = time.time() - started
    print(f"\nseconds per class (finetune + scoring): {json.dumps({str(k): v for k, v in seconds.items()})}")
    print(f"wall time: {wall / 60:.1f} min")
    print(json.dumps({**summary(results, classes, kinds), "wall_minutes": round(wall / 60, 1)}))
