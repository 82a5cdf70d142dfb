"""`diffmine classify` on the towns held-out split: accuracy, speed of adaptive pruning vs exhaustive,
and the label audit's precision / recall at finding 5% flipped labels.

    python -m benchmarks.anomaly_classify_towns [--first-draws 4] [--draws 12] [--keep 2] [--data-seed N]
        [--protocol benchmarks/protocols/classify.json]

The shipped model (assets/tiny-towns-model) classifies the held-out towns images (diffmine.apps.demo.run's
towns data, 40 per town). 5% of the images (seeded) get another town's label in the metadata;
accuracy is measured against the TRUE labels, the audit (images more typical of another label
than of their given one) against the set of flipped images. Every proportion carries Clopper-Pearson's
exact 95 % interval (8 of 8 flipped labels found is a recall in [0.63, 1]). Each run is appended to
results/anomaly_classify_towns.json with one row per image and mode. Last line: one JSON object.

Baseline, same run, same test images (mode `pixel_logistic`): scikit-learn's logistic regression on
the pixels (RGB at LR_SIDE px, 2 x 2 means of the 64 px images, standardised: at 64 px the
cross-validated search on 2,000 images takes several times longer on 2 cores), fitted on the towns train split of the same
data folder (the generator's training images, none of them a test image) with C chosen by LR_FOLDS-fold
stratified cross-validation on those training images over LR_CS (printed); accuracy with its
Clopper-Pearson interval, its audit (an image is flagged where the regression's label is not its given
one) with the same intervals, and the paired difference in accuracy of each diffmine mode minus the
regression with a percentile bootstrap interval over test images.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def flipped_copy(test: Path, out: Path, rate: float, seed: int) -> tuple[dict, set]:
    """A copy of the data folder whose metadata gives `rate` of the images a wrong label."""
    rows = [json.loads(l) for l in (test / "metadata.jsonl").read_text().splitlines() if l.strip()]
    labels = sorted({r["label"] for r in rows})
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(rows), size=max(1, round(rate * len(rows))), replace=False).tolist())
    truth, flipped = {}, set()
    out.mkdir(parents=True)
    (out / "images").symlink_to((test / "images").resolve())
    with open(out / "metadata.jsonl", "w") as f:
        for i, r in enumerate(rows):
            image_id = str(Path(r["file_name"]).with_suffix(""))
            truth[image_id] = r["label"]
            label = r["label"]
            if i in flip:
                label = rng.choice([c for c in labels if c != r["label"]])
                flipped.add(image_id)
            f.write(json.dumps({"file_name": r["file_name"], "label": str(label)}) + "\n")
    return truth, flipped


LR_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # logistic regression: the C grid searched by cross-validation
LR_FOLDS = 5
LR_SIDE = 32  # px the regression sees (box means of the 64 px images)


def read_split(folder: Path, side: int = LR_SIDE) -> tuple[list[str], list[str], np.ndarray]:
    """(image ids, labels, (n, side x side x 3) pixels in [0, 1], box-resized) of a data folder's metadata.jsonl."""
    from PIL import Image

    rows = [json.loads(l) for l in (folder / "metadata.jsonl").read_text().splitlines() if l.strip()]
    x = np.stack([np.asarray(Image.open(folder / r["file_name"]).convert("RGB").resize((side, side), Image.BOX),
                             np.float32).ravel() / 255 for r in rows])
    return [str(Path(r["file_name"]).with_suffix("")) for r in rows], [str(r["label"]) for r in rows], x


def pixel_logistic(train: Path, test: Path, seed: int) -> dict:
    """Logistic regression on pixels, C chosen by cross-validation on the training images only:
    {image_id: (predicted label, {label: probability})} of the test images, and the search's table."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, y_tr, x_tr = read_split(train)
    ids, _, x_te = read_split(test)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                          {"logisticregression__C": list(LR_CS)},
                          cv=StratifiedKFold(LR_FOLDS, shuffle=True, random_state=seed), scoring="accuracy")
    search.fit(x_tr, y_tr)
    cv = [{"C": c, "cv_accuracy": round(float(m), 4)}
          for c, m in zip(LR_CS, search.cv_results_["mean_test_score"])]
    best = search.best_params_["logisticregression__C"]
    print(f"pixel logistic regression on {len(y_tr)} training images: {LR_FOLDS}-fold CV accuracy by C "
          + ", ".join(f"{r['C']:g}: {r['cv_accuracy']:.3f}" for r in cv) + f"; chosen C = {best:g}", flush=True)
    proba = search.predict_proba(x_te)
    classes = [str(c) for c in search.classes_]
    pred = {i: (classes[int(np.argmax(p))], dict(zip(classes, p.tolist()))) for i, p in zip(ids, proba)}
    return {"predictions": pred, "cv": cv, "C": best, "n_train": len(y_tr)}


def main(argv=None) -> None:
    from diffmine.apps.classify.run import run_classify
    from diffmine.apps.classify.config import ClassifyConfig
    from diffmine.core.models import SMALL_BASE_DIR as TINY_BASE
    from diffmine.apps.demo.run import towns_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=12, help="adaptive: extra draws for the finalists")
    p.add_argument("--first-draws", type=int, default=4)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--flip", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--towns", default="runs/towns", help="where the towns data is generated (or reused)")
    p.add_argument("--data-seed", type=int, default=None,
                   help="towns data seed, under TOWNS/seedN (default: the recipe's; --seed draws the flips and draws)")
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.records import protocol_argument, save_run

    protocol_argument(p)
    args = p.parse_args(argv)
    started = time.time()
    seeded = {} if args.data_seed is None else {"seed": args.data_seed}
    test = towns_data(Path(args.towns) / ("" if args.data_seed is None else f"seed{args.data_seed}"), **seeded) / "test"
    from diffmine.evaluation.intervals import proportion_interval

    results, items = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth, flipped = flipped_copy(test, tmp / "data", args.flip, args.seed)
        for prune in ("off", "adaptive"):
            res = run_classify(ClassifyConfig(model=str(TINY_BASE), data=str(tmp / "data"), out=str(tmp / prune),
                                              # exhaustive: every label gets the finalists' total draws
                                              draws=args.draws + (args.first_draws if prune == "off" else 0),
                                              first_draws=args.first_draws, keep=args.keep,
                                              prune=prune, seed=args.seed), progress=False)
            preds = list(csv.DictReader(open(tmp / prune / "predictions.csv")))
            acc = float(np.mean([truth[r["image_id"]] == r["predicted"] for r in preds]))
            audit = list(csv.DictReader(open(tmp / prune / "audit.csv")))
            flagged = {r["image_id"] for r in audit if r["flagged"] == "1"}
            top = {r["image_id"] for r in audit[:len(flipped)]}
            hit = len(flagged & flipped)
            correct = sum(truth[r["image_id"]] == r["predicted"] for r in preds)
            items += [{"mode": prune, "image_id": r["image_id"], "true": truth[r["image_id"]], "predicted": r["predicted"],
                       "flipped": int(r["image_id"] in flipped), "flagged": int(r["image_id"] in flagged)} for r in preds]
            cis = {"accuracy_ci": proportion_interval(correct, len(preds)),
                   "audit_precision_ci": proportion_interval(hit, len(flagged)) if flagged else [None, None],
                   "audit_recall_ci": proportion_interval(hit, len(flipped))}
            results[prune] = {**{k: [round(x, 4) for x in v] if v[0] is not None else v for k, v in cis.items()},
                              "accuracy_true_labels": round(acc, 4), "images_per_s": res["images_per_s"],
                              "unet_rows_per_image": res["unet_rows_per_image"],
                              "audit_flagged": len(flagged), "audit_precision": round(hit / max(1, len(flagged)), 4),
                              "audit_recall": round(hit / len(flipped), 4),
                              "audit_recall_at_k": round(len(top & flipped) / len(flipped), 4)}
            if prune == "adaptive":
                shutil.copytree(tmp / prune, Path("runs/anomaly_classify_towns"), dirs_exist_ok=True)
        # the baseline: logistic regression on pixels, on the same test images (their given labels as flipped)
        started_lr = time.time()
        lr = pixel_logistic(test.parent / "train", test, args.seed)
        given = dict(zip(*read_split(tmp / "data")[:2]))
    preds_lr = lr["predictions"]
    correct = sum(truth[i] == p for i, (p, _) in preds_lr.items())
    flagged = {i for i, (p, _) in preds_lr.items() if p != given[i]}
    # recall@k: the images whose given label the regression finds least likely
    top = set(sorted(preds_lr, key=lambda i: preds_lr[i][1].get(given[i], 0.0))[:len(flipped)])
    hit = len(flagged & flipped)
    cis = {"accuracy_ci": proportion_interval(correct, len(preds_lr)),
           "audit_precision_ci": proportion_interval(hit, len(flagged)) if flagged else [None, None],
           "audit_recall_ci": proportion_interval(hit, len(flipped))}
    results["pixel_logistic"] = {**{k: [round(x, 4) for x in v] if v[0] is not None else v for k, v in cis.items()},
                                 "accuracy_true_labels": round(correct / len(preds_lr), 4),
                                 "audit_flagged": len(flagged), "audit_precision": round(hit / max(1, len(flagged)), 4),
                                 "audit_recall": round(hit / len(flipped), 4),
                                 "audit_recall_at_k": round(len(top & flipped) / len(flipped), 4),
                                 "C": lr["C"], "cv": lr["cv"], "n_train": lr["n_train"],
                                 "seconds": round(time.time() - started_lr, 1)}
    items += [{"mode": "pixel_logistic", "image_id": i, "true": truth[i], "predicted": p, "flipped": int(i in flipped),
               "flagged": int(i in flagged)} for i, (p, _) in preds_lr.items()]
    # paired: each diffmine mode's accuracy minus the regression's, bootstrap over test images
    from diffmine.evaluation.intervals import statistic_estimate

    ids = sorted(truth)
    ok_lr = np.array([truth[i] == preds_lr[i][0] for i in ids], dtype=float)
    for mode in ("off", "adaptive"):
        got = {it["image_id"]: it["predicted"] for it in items if it["mode"] == mode}
        ok = np.array([truth[i] == got[i] for i in ids], dtype=float)
        e = statistic_estimate(ids, lambda r: ok[r].mean() - ok_lr[r].mean())
        results[mode]["accuracy_margin_over_pixel_logistic"] = round(e["value"], 4)
        results[mode]["accuracy_margin_over_pixel_logistic_ci"] = [round(x, 4) for x in e["ci"]]
    n = len(truth)
    print(f"towns held-out: {n} images, {len(flipped)} labels flipped ({args.flip:.0%}); exhaustive: "
          f"{args.first_draws + args.draws} draws for every label; adaptive: {args.first_draws} draws for every label, +{args.draws} for the best {args.keep}")
    print(f"{'mode':<16}{'accuracy':>10}{'img/s':>9}{'rows/img':>10}{'flagged':>9}{'precision':>11}{'recall':>8}"
          f"{'recall@k':>10}")
    for mode, r in results.items():
        speed = (f"{r['images_per_s']:>9.3f}{r['unet_rows_per_image']:>10.0f}" if "images_per_s" in r
                 else f"{'-':>9}{'-':>10}")
        print(f"{mode:<16}{r['accuracy_true_labels']:>10.3f}{speed}"
              f"{r['audit_flagged']:>9}{r['audit_precision']:>11.3f}{r['audit_recall']:>8.3f}{r['audit_recall_at_k']:>10.3f}")
    for mode, r in results.items():
        print(f"{mode}: 95 % intervals: accuracy {r['accuracy_ci']}, audit precision {r['audit_precision_ci']}, "
              f"recall {r['audit_recall_ci']}")
    for mode in ("off", "adaptive"):
        r = results[mode]
        print(f"{mode} - pixel_logistic accuracy (paired bootstrap over images): "
              f"{r['accuracy_margin_over_pixel_logistic']:+.4f} {r['accuracy_margin_over_pixel_logistic_ci']}")
    print(f"wall time: {(time.time() - started) / 60:.1f} min")
    save_run("anomaly_classify_towns", results, items, protocol=vars(args), protocol_file=args.protocol)
    print(json.dumps({"towns_accuracy_exhaustive": results["off"]["accuracy_true_labels"],
                      "towns_accuracy_adaptive_ci": results["adaptive"]["accuracy_ci"],
                      "audit_recall_ci": results["adaptive"]["audit_recall_ci"],
                      "audit_precision_ci": results["adaptive"]["audit_precision_ci"],
                      "towns_accuracy_adaptive": results["adaptive"]["accuracy_true_labels"],
                      "images_per_s_exhaustive": results["off"]["images_per_s"],
                      "images_per_s_adaptive": results["adaptive"]["images_per_s"],
                      "audit_precision": results["adaptive"]["audit_precision"],
                      "audit_recall": results["adaptive"]["audit_recall"],
                      "audit_precision_exhaustive": results["off"]["audit_precision"],
                      "audit_recall_exhaustive": results["off"]["audit_recall"],
                      "pixel_logistic_accuracy": results["pixel_logistic"]["accuracy_true_labels"],
                      "pixel_logistic_accuracy_ci": results["pixel_logistic"]["accuracy_ci"],
                      "pixel_logistic_audit_recall": results["pixel_logistic"]["audit_recall"],
                      "accuracy_margin_adaptive_over_pixel_logistic_ci":
                          results["adaptive"]["accuracy_margin_over_pixel_logistic_ci"]}))


if __name__ == "__main__":
    main()
