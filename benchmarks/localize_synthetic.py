"""Finetuned vs base localisation on synthetic radiographs (docs/method.md §5).

Generates the synthetic chest X-ray data (diffmine.datasets.radiographs: 600 training, 100 held-out images),
finetunes the shipped towns model (our stand-in for a pretrained base) on the training split with
the published chest X-ray prompts ("Chest X-Ray with {findings}." / "Chest X-Ray.") — no box is
used for training — then localises every boxed finding of the held-out split with the finetuned
and with the base model (`diffmine localize`, full t range as published).
The one setting not fixed by the paper, the threshold that turns a map into a predicted box, is
chosen on training images only (the value maximising IoBB@0.1 + IoBB@0.25 + IoBB@0.5 there).

    python benchmarks/localize_synthetic.py [--work runs/localize_synthetic] [--steps 250]

A finished finetuning in WORK/model with the same settings is reused (delete it to retrain).
Prints the per-finding table of both models; last line one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def finetune(data: Path, out: Path, steps: int, batch: int, lr: float) -> float:
    from finetune.train import train
    from finetune.config import TrainConfig

    info = out / "diffmine_train.json"
    if info.exists():
        old = json.loads(info.read_text())
        if (old.get("max_steps"), old.get("batch_size"), old.get("lr")) == (steps, batch, lr):
            print(f"reusing the finetuned model in {out} ({old['steps']} steps, {old['train_seconds']} s)")
            return float(old["train_seconds"])
    t0 = time.time()
    train(TrainConfig(data=str(data), out=str(out), base="tiny", preset="chest_xray", batch_size=batch,
                      max_steps=steps, lr=lr, checkpoint_every=50, resume=out.exists(), samples_per_label=0,
                      log_every=10), progress=False)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/localize_synthetic")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-select", type=int, default=40, help="training images used to choose the threshold")
    ap.add_argument("--draws", type=int, default=None)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")

    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.localize.boxes import place_boxes, read_boxes
    from diffmine.apps.localize.config import LocalizeConfig
    from diffmine.apps.localize.run import compute_maps, format_table, localization_table, model_labels, run_localize
    from diffmine.datasets.radiographs import xray_data

    start = time.time()
    work = Path(a.work)
    data = work / "data"
    if not (data / "test" / "BBox_List_2017.csv").exists():
        xray_data(data, a.n_train, a.n_test, seed=0)
    model, base = work / "model", ROOT / "assets" / "tiny-towns-model"
    train_s = finetune(data / "train", model, a.steps, a.batch_size, a.lr)

    # -- the map threshold, on training images only --------------------------------------
    from diffmine.core.bundle import SDBundle
    from diffmine.core.prompts import PromptTemplate

    train_set = LabeledImages(data / "train")
    placed, _ = place_boxes(read_boxes(data / "train" / "BBox_List_2017.csv", model_labels(model)), train_set, 64)
    ids = sorted({b.image_id for b in placed})[:a.n_select]
    placed = [b for b in placed if b.image_id in ids]
    records, images = train_set.load_arrays(64, [train_set[train_set.index(i)] for i in ids])
    findings = [sorted({b.finding for b in placed if b.image_id == i}) for i in ids]
    select_dir = work / "select_typicality"
    import shutil
    shutil.rmtree(select_dir, ignore_errors=True)
    store = compute_maps(SDBundle.from_pretrained(model), images, ids, findings, select_dir,
                         prompts=PromptTemplate.load(model), t_range=(0.0, 1.0), draws=a.draws, progress=False)
    scores = {}
    for th in THRESHOLDS:
        o = localization_table(store, placed, th)[0]["overall"]
        scores[th] = o["iobb_0.1"] + o["iobb_0.25"] + o["iobb_0.5"]
        print(f"training images ({len(placed)} boxes), threshold {th}: IoBB@0.1 {o['iobb_0.1']:.3f} "
              f"@0.25 {o['iobb_0.25']:.3f} @0.5 {o['iobb_0.5']:.3f}  AUC-PR {o['auc_pr']:.3f}")
    threshold = max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.5)))
    print(f"chosen threshold: {threshold}")

    # -- held-out: finetuned vs base ------------------------------------------------------
    cfg = LocalizeConfig(model=str(model), data=str(data / "test"), boxes=str(data / "test" / "BBox_List_2017.csv"),
                         out=str(work / "localize"), base_model=str(base), draws=a.draws, threshold=threshold)
    metrics = run_localize(cfg, progress=False)
    print()
    print(format_table(metrics))
    o = metrics["overall"]
    wall = time.time() - start
    print(f"\nfinetuning {train_s:.0f} s ({a.steps} steps of {a.batch_size}, lr {a.lr}); whole benchmark {wall:.0f} s; "
          f"report: {work / 'localize' / 'report.html'}")
    print(json.dumps({"finetuned_auc_pr": round(o["auc_pr"], 4), "base_auc_pr": round(o["base_auc_pr"], 4),
                      "finetuned_iobb_0.1": round(o["iobb_0.1"], 4), "base_iobb_0.1": round(o["base_iobb_0.1"], 4),
                      "finetuned_pointing": round(o["pointing_game"], 4)}))


if __name__ == "__main__":
    main()
