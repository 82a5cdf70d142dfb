"""Does the `patches` default transfer? Chosen on one generator, reported on defect families it never saw.

Protocol:
1. Choice, on diffmine.datasets.defects ONLY (its weave texture at each of --select-sizes px, 128 and
   256): every feature setting of CANDIDATES (patch features vae / vae+pixels / dift / pixels at 8 and
   16 px, each unpooled and 3 x 3 pooled; --shortlist: the three of SHORTLIST) is fitted on
   --select-train normal images of its train split and scored on its labelled val split with each image
   score (the top-k mean, top-k-or-mean); the cheapest candidate whose mean, over the sizes, of image
   AUROC per group (local, weave, global) and pixel AUROC is within SELECT_TOL of the best is chosen
   (anomaly_defects.pick). The table and the choice are printed.
2. Report, on diffmine.datasets.defect_families ONLY (never consulted for a choice): per texture
   family and image size (every family at 64 px, --big-textures at 256 px with fewer images), a
   detector fitted on --n-train normal images scores --n-test images of every defect kind and twice
   as many good ones. Beside the chosen `patches` detector, in the same run on the same images:
   PatchCore on raw 16 px pixel patches of the whole image (stride 8, a random 10 % bank, nearest-
   patch distance, the maximum over the image: the issue's baseline) and PyOD's IForest, OCSVM,
   COPOD, ECOD and kNN on the 64 x 64 RGB pixels. Image AUROC per defect kind (good vs that kind)
   and per group (local, global) with 95 % bootstrap intervals over images; pixel AUROC and PRO of
   the two patch detectors over the good and local-defect images (global changes cover the whole
   image: no pixel ranking to make), point and interval on the same maps (pooled to 64 px); per
   defect kind and group, the AUROC of `patches` minus that of the pixel PatchCore, with a paired
   bootstrap interval (the same resampled images for both).
Each run is appended to benchmarks/results/anomaly_transfer.json with its per-image scores.

    OMP_NUM_THREADS=1 python -m benchmarks.anomaly_transfer --threads 1 [--shipped-default] [--seed N]
                                                              [--protocol benchmarks/protocols/transfer.json]

`--shipped-default` skips step 1 and reports the detector's shipped `patches` default (chosen by an
earlier step 1), the confirmation of that choice; `--seed` seeds the choice's data and the families'.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.anomaly_defects import SELECT_TOL, baselines, boot_ci, group_auroc, pick, pixel_estimates, split
from diffmine.apps.anomaly.config import IMAGE_SCORES
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.patches import MemoryBank, random_subset, stitch
from diffmine.apps.anomaly.pixel_features import pixel_patch_features
from diffmine.datasets import defect_families as fam
from diffmine.datasets.defects import GOOD, generate_defects
from diffmine.evaluation.anomaly import pixel_auroc
from diffmine.evaluation.metrics import auroc

# the cheaper first within a feature source (a tie keeps the first); each fit is scored with every
# image score of IMAGE_SCORES (one fit, the same patch distances)
CANDIDATES = [dict(patch_features=f, patch_pool=p, **extra) for f, extra in
              (("pixels", dict(patch_size=8)), ("pixels", dict(patch_size=16)), ("vae", {}), ("vae+pixels", {}),
               ("dift", {}))
              for p in (1, 3)]
# --shortlist: the feature settings whose mean in the first choice (anomaly_transfer.json, 2026-12-06,
# commit ba6e7d3) was within 0.03 of its best (vae+pixels 0.980, vae 0.965, pixels 8 px 0.952)
SHORTLIST = [dict(patch_features="pixels", patch_pool=1, patch_size=8), dict(patch_features="vae", patch_pool=1),
             dict(patch_features="vae+pixels", patch_pool=1)]
CHOICE_KEYS = ("patch_features", "patch_pool", "patch_size", "image_score")  # what step 1 chooses
GROUPS = ("local", "weave", "global")  # diffmine.datasets.defects' groups
CLASSIC = ("iforest", "ocsvm", "copod", "ecod", "knn-pixels")
BOOT = 1000
PIXEL_BOOT = 100
SEED_OFFSET = 32  # the families' seeds: never used by the choice (which reads diffmine.datasets.defects)


# -- 1. the choice, on diffmine.datasets.defects ---------------------------------------------------
def select_cell(args, size: int, features: dict) -> list[dict]:
    """One feature setting fitted on the defects train split at `size` px, scored on its val split with every
    image score: per image score, image AUROC per group, pixel AUROC (local and weave images: a global change's
    mask is the whole image) and the seconds of the fit and its scoring."""
    data = generate_defects(Path(args.select_data) / f"{size}px", n_train=args.select_train, n_val=args.select_val,
                            n_test=1, size=size, seed=args.seed)
    train = sorted(str(p) for p in (data / "train" / "images").rglob("*.png"))
    rows, paths = split(data, "val", GROUPS)
    masks = np.stack([r["mask"] for r in rows])
    has_mask = np.array([r["group"] != "global" for r in rows])
    t0 = time.perf_counter()
    det = DiffusionDetector(model="tiny", score="patches", **features).fit(train)
    fit_s, out = time.perf_counter() - t0, []
    for image_score in IMAGE_SCORES:  # the same fit, another way of reading its patch distances
        t0 = time.perf_counter()
        det.set_params(image_score=image_score)  # drops the scores remembered for these images
        scores, maps = det.decision_function(paths), det.anomaly_maps(paths)
        groups = {g: group_auroc(rows, scores, g) for g in GROUPS}
        out.append({**features, "image_score": image_score, **groups,
                    "pixel": pixel_auroc(maps[has_mask], masks[has_mask]),
                    "fit_and_val_s": round(fit_s + time.perf_counter() - t0, 1)})
    return out


def select(args) -> tuple[dict, list[dict]]:
    """Every candidate at every --select-sizes; its mean: over the sizes, of its groups' AUROC and pixel AUROC."""
    DiffusionDetector(model="tiny", score="patches").fit(
        np.zeros((2, 64, 64, 3), np.uint8))  # the model's first load, untimed
    table = []
    for features in (SHORTLIST if args.shortlist else CANDIDATES):
        per_size = {size: select_cell(args, size, features) for size in args.select_sizes}
        for i, image_score in enumerate(IMAGE_SCORES):
            cells = [per_size[size][i] for size in args.select_sizes]
            row = {**features, "image_score": image_score,
                   **{f"{k}_{size}": c[k] for size, c in zip(args.select_sizes, cells) for k in (*GROUPS, "pixel")},
                   "fit_and_val_s": round(sum(c["fit_and_val_s"] for c in cells), 1)}
            row["mean"] = float(np.mean([np.mean([c[k] for k in (*GROUPS, "pixel")]) for c in cells]))
            table.append(row)
            print("select", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    best = pick(table)
    return {k: v for k, v in best.items() if k in CHOICE_KEYS}, table


# -- 2. the report, on diffmine.datasets.defect_families -----------------------------------------
def pixel_patchcore(train: np.ndarray, test: np.ndarray, seed: int, size: int = 16, ratio: float = 0.1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The issue's baseline: (image scores, maps at the image size) of PatchCore on raw size px patches of the
    whole image, every size / 2 px, a random `ratio` bank, nearest-patch distance, the image's maximum."""
    def patches(images):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        f = pixel_patch_features(x, size)
        return f.permute(0, 2, 3, 1).reshape(len(images), -1, f.shape[1]).numpy(), f.shape[2:]

    tr, _ = patches(train)
    pool = tr.reshape(-1, tr.shape[-1])
    keep = random_subset(len(pool), max(1, int(ratio * len(pool))), seed)
    bank = MemoryBank(pool[keep], np.zeros(len(keep), int), "exact")  # the baseline as its recipe: exact
    te, cells = patches(test)
    d = bank.distances(te.reshape(-1, te.shape[-1])).reshape(len(test), *cells)
    side = test.shape[1]
    box = np.array([[0, 0, side, side]])
    maps = np.stack([stitch(torch.from_numpy(m[None]).float(), box, (side, side)).numpy() for m in d])
    return d.reshape(len(test), -1).max(axis=1), maps


def to_64(images: np.ndarray) -> np.ndarray:
    """(n, 64 x 64 x 3) pixels in [0, 1]: what the PyOD detectors see."""
    from PIL import Image

    if images.shape[1] != 64:
        images = np.stack([np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR)) for a in images])
    return images.reshape(len(images), -1).astype(np.float32) / 255


def family(texture: str, size: int, n_train: int, n_test: int, seed: int) -> dict:
    labels = fam.labels_for(texture)
    train, _ = fam.sample(texture, GOOD, size, n_train, seed)
    parts = [fam.sample(texture, lb, size, 2 * n_test if lb == GOOD else n_test, seed, start=n_train if lb == GOOD
                        else 0) for lb in labels]
    label = np.concatenate([[lb] * len(p[0]) for lb, p in zip(labels, parts)])
    return {"train": train, "test": np.concatenate([p[0] for p in parts]),
            "masks": np.concatenate([p[1] for p in parts]), "label": label}


def evaluate(cell: dict, chosen: dict, seed: int) -> tuple[dict, dict, dict]:
    """Per detector: image scores; per patch detector: maps; seconds per detector."""
    scores, maps, seconds = {}, {}, {}
    t0 = time.perf_counter()
    det = DiffusionDetector(model="tiny", score="patches", **chosen).fit(cell["train"])
    scores["patches"], maps["patches"] = det.decision_function(cell["test"]), det.anomaly_maps(cell["test"])
    seconds["patches"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    scores["patchcore-pixels"], maps["patchcore-pixels"] = pixel_patchcore(cell["train"], cell["test"], seed)
    seconds["patchcore-pixels"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    scores.update(baselines(to_64(cell["train"]), to_64(cell["test"]), seed))
    seconds["pyod"] = round(time.perf_counter() - t0, 1)
    return scores, maps, seconds


def cell_report(cell: dict, scores: dict, maps: dict, size: int) -> dict:
    label = cell["label"]
    good = label == GOOD
    kinds = [lb for lb in dict.fromkeys(label) if lb != GOOD]
    subsets = {k: good | (label == k) for k in kinds}
    subsets["local"] = good | np.isin(label, fam.LOCAL)
    subsets["global"] = good | np.isin(label, fam.GLOBAL)
    out = {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        per = {}
        for k, sel in subsets.items():
            idx = np.flatnonzero(sel)
            y, v = ~good[idx], s[idx]
            per[k] = {"value": auroc(v, y), "ci": boot_ci(idx, lambda i: auroc(v[i], y[i]), n=BOOT)}
        out[name] = per
    # ours minus the baseline, per subset, with a paired bootstrap (the same resampled images)
    ours, base = (np.asarray(scores[n], np.float64) for n in ("patches", "patchcore-pixels"))
    margins = {}
    for k, sel in subsets.items():
        idx = np.flatnonzero(sel)
        y = ~good[idx]
        margins[k] = {"value": out["patches"][k]["value"] - out["patchcore-pixels"][k]["value"],
                      "ci": boot_ci(idx, lambda i: auroc(ours[idx][i], y[i]) - auroc(base[idx][i], y[i]), n=BOOT)}
    local = np.flatnonzero(subsets["local"])
    pix = {name: pixel_estimates(m[local], cell["masks"][local], pool=max(1, size // 64), n=PIXEL_BOOT)
           for name, m in maps.items()}
    return {"image": out, "margin_over_patchcore_pixels": margins, "pixel": pix}


def table_lines(key: str, rep: dict) -> list[str]:
    f = lambda e: f"{e['value']:.3f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]"  # noqa: E731
    kinds = list(rep["image"]["patches"])
    lines = [f"== {key}: image AUROC [95 % CI]", "detector".ljust(18) + "".join(k.ljust(21) for k in kinds)]
    for name, per in rep["image"].items():
        lines.append(name.ljust(18) + "".join(f(per[k]).ljust(21) for k in kinds))
    margins = rep["margin_over_patchcore_pixels"]
    lines.append("ours - pixels".ljust(18) + "".join(
        f"{margins[k]['value']:+.3f} [{margins[k]['ci'][0]:+.2f},{margins[k]['ci'][1]:+.2f}]".ljust(21) for k in kinds))
    for name, p in rep["pixel"].items():
        lines.append(f"  pixel ({p['pixel_maps']}) {name}: AUROC {p['pixel_auroc']:.3f} "
                     f"[{p['pixel_auroc_ci'][0]:.3f}, {p['pixel_auroc_ci'][1]:.3f}], PRO {p['pro']:.3f} "
                     f"[{p['pro_ci'][0]:.3f}, {p['pro_ci'][1]:.3f}]")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--select-data", default="/tmp/diffmine-bench/defects-select")
    ap.add_argument("--select-sizes", type=int, nargs="+", default=[128, 256], help="px of the choice's defects images")
    ap.add_argument("--shortlist", action="store_true", help="choose among SHORTLIST's feature settings only")
    ap.add_argument("--select-train", type=int, default=60, help="normal images the candidates are fitted on")
    ap.add_argument("--select-val", type=int, default=6, help="val images per defect kind (2x good)")
    ap.add_argument("--n-train", type=int, default=100, help="normal training images per family (64 px)")
    ap.add_argument("--n-test", type=int, default=24, help="test images per defect kind, 2x good (64 px)")
    ap.add_argument("--textures", nargs="+", default=list(fam.TEXTURES))
    ap.add_argument("--big-textures", nargs="*", default=["twill", "grain"], help="families also run at 256 px")
    ap.add_argument("--big-train", type=int, default=60)
    ap.add_argument("--big-test", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", help="JSON settings instead of the choice (skips step 1; a smoke run)")
    ap.add_argument("--shipped-default", action="store_true",
                    help="report the detector's shipped `patches` default instead of a new choice (skips step 1: "
                         "the confirmation of a default already chosen by step 1)")
    ap.add_argument("--select-only", action="store_true", help="step 1 only: print the choice, record nothing")
    from benchmarks.records import protocol_argument, save_run

    protocol_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    defaults = DiffusionDetector().get_params()
    if args.settings:
        chosen, table = json.loads(args.settings), []
    elif args.shipped_default:
        chosen, table = {k: defaults[k] for k in CHOICE_KEYS}, []
    else:
        chosen, table = select(args)
    print("chosen on defects val:", json.dumps(chosen), "| the shipped default:",
          json.dumps({k: defaults[k] for k in chosen}), flush=True)
    if args.select_only:
        return
    select_s = round(time.perf_counter() - started, 1)

    cells = [(t, 64, args.n_train, args.n_test) for t in args.textures]
    cells += [(t, 256, args.big_train, args.big_test) for t in args.big_textures]
    report, items, seconds = {}, [], {}
    for texture, size, n_train, n_test in cells:
        key = f"{texture}-{size}"
        cell = family(texture, size, n_train, n_test, args.seed + SEED_OFFSET)
        scores, maps, seconds[key] = evaluate(cell, chosen, args.seed)
        report[key] = cell_report(cell, scores, maps, size)
        print("\n".join(table_lines(key, report[key])), f"\n  seconds: {seconds[key]}", flush=True)
        counter = {}
        for i, lb in enumerate(cell["label"]):
            counter[lb] = counter.get(lb, -1) + 1
            items.append({"family": key, "label": lb, "group": fam.group(lb) or "", "index": counter[lb],
                          **{n: f"{scores[n][i]:.6g}" for n in scores},
                          **{f"{n}_map_max": f"{maps[n][i].max():.6g}" for n in maps}})

    def r4(x):
        return round(x, 4) if isinstance(x, float) else [r4(v) for v in x] if isinstance(x, list) else \
            {k: r4(v) for k, v in x.items()} if isinstance(x, dict) else x

    summary = {"chosen": chosen, "selection": r4(table), "select_s": select_s, "seconds": seconds,
               "wall_minutes": round((time.perf_counter() - started) / 60, 1), "families": r4(report)}
    save_run("anomaly_transfer", summary, items, protocol=vars(args), protocol_file=args.protocol)
    print(f"wall: {summary['wall_minutes']} min")


if __name__ == "__main__":
    main()
