"""Localisation on synthetic radiographs against real baselines (docs/method.md §5).

Generates the synthetic chest X-ray data (diffmine.datasets.radiographs: 600 training, 100 held-out
images) and finetunes the shipped towns model on the training split twice, for the same steps:
* finetuned: with the published chest X-ray prompts ("Chest X-Ray with {findings}." / "Chest X-Ray.");
* domain-only: every prompt replaced by the null prompt (`--null-rate 1`): it learns chest films,
  never a finding; this is what the labels add, as the paper's comparison with SD v1.5.
No box is used for training. Every boxed finding of the held-out split is then localised by both
(`diffmine localize`, full t range as published) and by two map-free baselines: the box prior
(the mean box mask of that finding's training boxes) and a random map. Two more rows use the
training boxes: the box prior at its own threshold (`box_prior_tuned`) and the finetuned map, min-max
normalised, times the box prior (`finetuned_x_prior`); AUC-PR and the pointing game do not depend on
a threshold, so `box_prior_tuned` differs from `box_prior` in IoBB only.

Frozen protocol. The one free setting, the threshold that turns a map into a box, is chosen on
training images only (IoBB@0.1 + @0.25 + @0.5 of the finetuned model, over a grid that extends
until the score turns) and printed; `box_prior_tuned` and `finetuned_x_prior` get theirs by the same
rule on the same training boxes, also printed (`box_prior` and `random` keep the finetuned map's). Intervals: 95 %, bootstrap over held-out images (the boxes of
one image are resampled together); the margins are paired (the same resampled images for both).
Goal: finetuned AUC-PR >= 2x domain-only with the ratio's interval above 1, IoBB@0.1 >= 0.8.

    python benchmarks/localize_synthetic.py [--work runs/localize_synthetic] [--steps 1000] [--seed N]
        [--protocol benchmarks/protocols/localisation.json]

`--seed N` generates the radiographs with seed N (under WORK/seedN) instead of 0; nothing else changes.

Finished finetunings in WORK/model and WORK/domain_only with the same settings are reused.
Appends the run to results/localize_synthetic.json (per-box table in results/localize_synthetic/);
last line one JSON object.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks.records when run as a script
THRESHOLD_STEP = 0.05
FIRST_THRESHOLD = 0.3
EARLIER_HELD_OUT_RUNS = 3  # before this protocol: see results/localize_synthetic.txt
RANDOM_SEED = 0


def finetune(data: Path, out: Path, steps: int, batch: int, lr: float, null_rate: float | None = None) -> float:
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
                      log_every=10, null_rate=null_rate), progress=False)
    return time.time() - t0


def choose_threshold(store, placed, pairs=None, name=None) -> tuple[float, list[dict]]:
    """Sweep the map threshold upwards until IoBB@0.1+0.25+0.5 falls below its best (or 0.95).

    The store's maps of the boxes `placed`, or `pairs` instead: (map, box mask) per box of another method
    (`name`, printed), on the same boxes."""
    from diffmine.apps.localize.run import localization_table
    from diffmine.evaluation.localization import score_map, summarize

    def overall(th: float) -> dict:
        if pairs is None:
            return localization_table(store, placed, th)[0]["overall"]
        return summarize([score_map(m, k, th) for m, k in pairs])

    sweep, best = [], None
    th = FIRST_THRESHOLD
    while th <= 0.95 + 1e-9:
        o = overall(round(th, 2))
        score = o["iobb_0.1"] + o["iobb_0.25"] + o["iobb_0.5"]
        sweep.append({"threshold": round(th, 2), "score": score, **{k: o[k] for k in ("iobb_0.1", "iobb_0.25",
                                                                                        "iobb_0.5", "auc_pr")}})
        print(f"{name + ', ' if name else ''}training images ({len(placed)} boxes), threshold {th:.2f}: "
              f"IoBB@0.1 {o['iobb_0.1']:.3f} @0.25 {o['iobb_0.25']:.3f} @0.5 {o['iobb_0.5']:.3f}")
        if best is None or score > best["score"]:
            best = sweep[-1]
        elif score < best["score"] and th - best["threshold"] >= 2 * THRESHOLD_STEP - 1e-9:
            break  # turned: two steps past the best and lower
        th += THRESHOLD_STEP
    return best["threshold"], sweep


def box_prior_maps(train_set, model: Path, res: int) -> dict:
    """Per finding, the mean mask of its training boxes at processing resolution."""
    import numpy as np

    from diffmine.apps.localize.boxes import place_boxes, read_boxes
    from diffmine.apps.localize.run import model_labels
    from diffmine.evaluation.groundtruth import rasterize_boxes

    placed, _ = place_boxes(read_boxes(train_set.root / "BBox_List_2017.csv", model_labels(model)), train_set, res)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for b in placed:
        sums[b.finding] = sums.get(b.finding, 0) + rasterize_boxes([b.xyxy], res)[0].astype(np.float64)
        counts[b.finding] = counts.get(b.finding, 0) + 1
    return {f: sums[f] / counts[f] for f in sums}


def unit_range(m):
    """The map min-max normalised to [0, 1] (a flat map: zeros), as the predicted box sees it."""
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


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
    ap.add_argument("--seed", type=int, default=None, help="radiograph generator seed (default: 0)")
    from benchmarks.records import protocol_argument, save_run

    protocol_argument(ap)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import numpy as np

    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.localize.boxes import place_boxes, read_boxes
    from diffmine.apps.localize.config import LocalizeConfig
    from diffmine.apps.localize.run import compute_maps, model_labels, run_localize
    from diffmine.datasets.radiographs import xray_data
    from diffmine.evaluation.groundtruth import rasterize_boxes
    from diffmine.evaluation.intervals import mean_estimate, statistic_estimate
    from diffmine.evaluation.localization import score_map

    start = time.time()
    # another seed, another folder: the data and models of seed 0 are reused only by seed 0
    work = Path(a.work) / ("" if a.seed is None else f"seed{a.seed}")
    data = work / "data"
    if not (data / "test" / "BBox_List_2017.csv").exists():
        xray_data(data, a.n_train, a.n_test, seed=a.seed or 0)
    model, domain = work / "model", work / "domain_only"
    train_s = finetune(data / "train", model, a.steps, a.batch_size, a.lr)
    domain_s = finetune(data / "train", domain, a.steps, a.batch_size, a.lr, null_rate=1.0)

    # -- the map threshold, on training images only --------------------------------------
    from diffmine.core.bundle import SDBundle
    from diffmine.core.prompts import PromptTemplate

    res = 64
    train_set = LabeledImages(data / "train")
    placed, _ = place_boxes(read_boxes(data / "train" / "BBox_List_2017.csv", model_labels(model)), train_set, res)
    ids = sorted({b.image_id for b in placed})[:a.n_select]
    placed = [b for b in placed if b.image_id in ids]
    records, images = train_set.load_arrays(res, [train_set[train_set.index(i)] for i in ids])
    findings = [sorted({b.finding for b in placed if b.image_id == i}) for i in ids]
    select_dir = work / "select_typicality"
    import shutil
    shutil.rmtree(select_dir, ignore_errors=True)
    store = compute_maps(SDBundle.from_pretrained(model), images, ids, findings, select_dir,
                         prompts=PromptTemplate.load(model), t_range=(0.0, 1.0), draws=a.draws, progress=False)
    threshold, sweep = choose_threshold(store, placed)
    turned = sweep[-1]["threshold"] > threshold
    print(f"chosen threshold: {threshold} ({'the score turned after it' if turned else 'end of the grid'})")
    # the baselines that use the training boxes get their own threshold, by the same rule on the same boxes
    prior = box_prior_maps(train_set, model, res)
    masks = [rasterize_boxes([b.xyxy], res)[0] for b in placed]
    own = {}
    for name, pairs in (("box_prior_tuned", [(prior[b.finding], k) for b, k in zip(placed, masks)]),
                        ("finetuned_x_prior", [(unit_range(store.map(b.image_id, b.finding, res)) * prior[b.finding], k)
                                               for b, k in zip(placed, masks)])):
        th, sw = choose_threshold(None, placed, pairs, name)
        own[name] = {"threshold": th, "threshold_sweep": sw, "threshold_turned": sw[-1]["threshold"] > th}
        print(f"{name}: chosen threshold {th}")

    # -- held-out: finetuned and domain-only, then the map-free baselines ------------------
    cfg = LocalizeConfig(model=str(model), data=str(data / "test"), boxes=str(data / "test" / "BBox_List_2017.csv"),
                         out=str(work / "localize"), base_model=str(domain), draws=a.draws, threshold=threshold)
    run_localize(cfg, progress=False)
    with open(work / "localize" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test_set = LabeledImages(data / "test")
    held, _ = place_boxes(read_boxes(data / "test" / "BBox_List_2017.csv", model_labels(model)), test_set, res)
    by_row = {str(b.box.row): b for b in held}
    from typicality.store import TypicalityStore

    held_store = TypicalityStore.open(work / "localize" / "typicality")  # the finetuned maps run_localize scored
    rng = np.random.default_rng(RANDOM_SEED)
    items = []
    for r in rows:
        b = by_row[r["box_row"]]
        mask = rasterize_boxes([b.xyxy], res)[0]
        pr = score_map(prior[b.finding], mask, threshold)
        rd = score_map(rng.random((res, res)), mask, threshold)
        pt = score_map(prior[b.finding], mask, own["box_prior_tuned"]["threshold"])
        fx = score_map(unit_range(held_store.map(b.image_id, b.finding, res)) * prior[b.finding], mask,
                       own["finetuned_x_prior"]["threshold"])
        items.append({"image_id": r["image_id"], "box_row": r["box_row"], "finding": r["finding"],
                      "box_share": float(mask.mean()),
                      "finetuned_auc_pr": float(r["auc_pr"]), "finetuned_iobb": float(r["iobb"]),
                      "finetuned_pointing": int(r["pointing"]),
                      "domain_only_auc_pr": float(r["base_auc_pr"]), "domain_only_iobb": float(r["base_iobb"]),
                      "domain_only_pointing": int(r["base_pointing"]),
                      "box_prior_auc_pr": pr["auc_pr"], "box_prior_iobb": pr["iobb"], "box_prior_pointing": int(pr["pointing"]),
                      "random_auc_pr": rd["auc_pr"], "random_iobb": rd["iobb"], "random_pointing": int(rd["pointing"]),
                      "box_prior_tuned_auc_pr": pt["auc_pr"], "box_prior_tuned_iobb": pt["iobb"],
                      "box_prior_tuned_pointing": int(pt["pointing"]),
                      "finetuned_x_prior_auc_pr": fx["auc_pr"], "finetuned_x_prior_iobb": fx["iobb"],
                      "finetuned_x_prior_pointing": int(fx["pointing"])})

    units = [it["image_id"] for it in items]
    col = {k: np.array([it[k] for it in items], dtype=np.float64) for k in items[0] if k.endswith(("auc_pr", "iobb", "pointing"))}
    methods = ("finetuned", "domain_only", "box_prior", "random", "box_prior_tuned", "finetuned_x_prior")

    def table_for(sel: np.ndarray) -> dict:
        u = [units[i] for i in np.flatnonzero(sel)]
        out = {}
        for m in methods:
            out[m] = {"auc_pr": mean_estimate(col[f"{m}_auc_pr"][sel], u),
                      "iobb_0.1": mean_estimate((col[f"{m}_iobb"][sel] > 0.1).astype(float), u),
                      "iobb_0.25": mean_estimate((col[f"{m}_iobb"][sel] > 0.25).astype(float), u),
                      "iobb_0.5": mean_estimate((col[f"{m}_iobb"][sel] > 0.5).astype(float), u),
                      "pointing": mean_estimate(col[f"{m}_pointing"][sel], u)}
        f, d, p = (col[f"{m}_auc_pr"][sel] for m in ("finetuned", "domain_only", "box_prior"))
        out["ratio_finetuned_over_domain_only_auc_pr"] = statistic_estimate(u, lambda i: f[i].mean() / d[i].mean())
        out["margin_finetuned_minus_box_prior_auc_pr"] = statistic_estimate(u, lambda i: f[i].mean() - p[i].mean())
        # paired margins over the baselines that use the training boxes (each at its own threshold)
        hit = {m: (col[f"{m}_iobb"][sel] > 0.1).astype(float) for m in ("finetuned", "box_prior_tuned",
                                                                        "finetuned_x_prior")}
        x = col["finetuned_x_prior_auc_pr"][sel]
        out["margin_finetuned_minus_box_prior_tuned_iobb_0.1"] = statistic_estimate(
            u, lambda i: hit["finetuned"][i].mean() - hit["box_prior_tuned"][i].mean())
        out["margin_finetuned_minus_finetuned_x_prior_auc_pr"] = statistic_estimate(u, lambda i: f[i].mean() - x[i].mean())
        out["margin_finetuned_minus_finetuned_x_prior_iobb_0.1"] = statistic_estimate(
            u, lambda i: hit["finetuned"][i].mean() - hit["finetuned_x_prior"][i].mean())
        out["n_boxes"] = int(sel.sum())
        return out

    findings_all = sorted({it["finding"] for it in items})
    per = {fd: table_for(np.array([it["finding"] == fd for it in items])) for fd in findings_all}
    overall = table_for(np.ones(len(items), dtype=bool))

    def ci(e):
        return f"{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"

    print(f"\nheld-out: {len(items)} boxes on {len(set(units))} images; threshold {threshold}; "
          f"mean box share {np.mean([it['box_share'] for it in items]):.3f}")
    print(f"{'finding':14s} {'n':>3s}  " + "  ".join(f"{m + ' AUC-PR':>26s}" for m in methods)
          + f"  {'finetuned IoBB@0.1':>22s}  {'ratio ft / domain-only':>24s}")
    for name, t in [*per.items(), ("overall", overall)]:
        print(f"{name:14s} {t['n_boxes']:3d}  " + "  ".join(f"{ci(t[m]['auc_pr']):>26s}" for m in methods)
              + f"  {ci(t['finetuned']['iobb_0.1']):>22s}  {ci(t['ratio_finetuned_over_domain_only_auc_pr']):>24s}")
    print(f"\noverall IoBB@0.1 (threshold: finetuned's {threshold} for finetuned, domain_only, box_prior, random; "
          + ", ".join(f"{m}'s own {own[m]['threshold']}" for m in own) + "):")
    for m in methods:
        print(f"  {m:18s} IoBB@0.1 {ci(overall[m]['iobb_0.1']):>26s}  pointing {ci(overall[m]['pointing']):>26s}")
    for k in ("margin_finetuned_minus_box_prior_auc_pr", "margin_finetuned_minus_box_prior_tuned_iobb_0.1",
              "margin_finetuned_minus_finetuned_x_prior_auc_pr", "margin_finetuned_minus_finetuned_x_prior_iobb_0.1"):
        print(f"  {k}: {ci(overall[k])}")
    ratio = overall["ratio_finetuned_over_domain_only_auc_pr"]
    iobb = overall["finetuned"]["iobb_0.1"]
    goals = {"ratio_ge_2x": ratio["value"] >= 2.0, "ratio_interval_above_1x": ratio["ci"][0] > 1.0,
             "iobb_0.1_ge_0.8": iobb["value"] >= 0.8, "iobb_0.1_interval_above_0.8": iobb["ci"][0] >= 0.8}
    wall = time.time() - start
    print(f"\nfinetuning {train_s:.0f} s, domain-only {domain_s:.0f} s ({a.steps} steps of {a.batch_size}, lr {a.lr}); "
          f"whole benchmark {wall:.0f} s; report: {work / 'localize' / 'report.html'}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    summary = {"overall": overall, "findings": per, "threshold": threshold, "threshold_sweep": sweep,
               "threshold_turned": turned, "goals": goals, "finetune_s": round(train_s, 1),
               "domain_only_s": round(domain_s, 1), "wall_s": round(wall, 1),
               "own_thresholds": own}  # box_prior_tuned's and finetuned_x_prior's, chosen on the same training boxes
    rec = save_run("localize_synthetic", summary, items, protocol_file=a.protocol, protocol={
        "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "n_train": a.n_train, "n_test": a.n_test,
        "n_select": a.n_select, "draws": a.draws, "earlier_held_out_runs": EARLIER_HELD_OUT_RUNS,
        **({} if a.seed is None else {"data_seed": a.seed})})
    print(f"appended to benchmarks/results/localize_synthetic.json (held-out run {rec['runs_before'] + EARLIER_HELD_OUT_RUNS + 1}); "
          f"per-box table {rec['items']}")
    fig = lambda e: round(e["value"], 4)
    cis = lambda e: [round(x, 4) for x in e["ci"]]
    print(json.dumps({
        "finetuned_auc_pr": fig(overall["finetuned"]["auc_pr"]), "finetuned_auc_pr_ci": cis(overall["finetuned"]["auc_pr"]),
        "domain_only_auc_pr": fig(overall["domain_only"]["auc_pr"]), "domain_only_auc_pr_ci": cis(overall["domain_only"]["auc_pr"]),
        "box_prior_auc_pr": fig(overall["box_prior"]["auc_pr"]), "box_prior_auc_pr_ci": cis(overall["box_prior"]["auc_pr"]),
        "random_auc_pr": fig(overall["random"]["auc_pr"]), "random_auc_pr_ci": cis(overall["random"]["auc_pr"]),
        "ratio_auc_pr": fig(ratio), "ratio_auc_pr_ci": cis(ratio),
        "finetuned_iobb_0.1": fig(iobb), "finetuned_iobb_0.1_ci": cis(iobb),
        "domain_only_iobb_0.1": fig(overall["domain_only"]["iobb_0.1"]),
        "threshold": threshold,
        "box_prior_tuned_iobb_0.1": fig(overall["box_prior_tuned"]["iobb_0.1"]),
        "box_prior_tuned_iobb_0.1_ci": cis(overall["box_prior_tuned"]["iobb_0.1"]),
        "box_prior_tuned_threshold": own["box_prior_tuned"]["threshold"],
        "finetuned_x_prior_auc_pr": fig(overall["finetuned_x_prior"]["auc_pr"]),
        "finetuned_x_prior_auc_pr_ci": cis(overall["finetuned_x_prior"]["auc_pr"]),
        "finetuned_x_prior_iobb_0.1": fig(overall["finetuned_x_prior"]["iobb_0.1"]),
        "finetuned_x_prior_iobb_0.1_ci": cis(overall["finetuned_x_prior"]["iobb_0.1"]),
        "finetuned_x_prior_threshold": own["finetuned_x_prior"]["threshold"],
        "margin_iobb_0.1_over_box_prior_tuned_ci": cis(overall["margin_finetuned_minus_box_prior_tuned_iobb_0.1"]),
        "margin_auc_pr_over_finetuned_x_prior_ci": cis(overall["margin_finetuned_minus_finetuned_x_prior_auc_pr"])}))


if __name__ == "__main__":
    main()
