"""Small defects on large textures: the `patches` score (PatchCore on the model's tile features) vs raw-pixel PyOD.

Data: diffmine.datasets.defects (weave textures, 256 px by default). Protocol:
* fit on the `train` split (normal images only);
* choose settings (patch features, neighbourhood pooling, tile stride, top-k) on the labelled `val` split only: the
  cheapest candidate whose mean of image AUROC (local defects), image AUROC (weave changes) and
  pixel AUROC is within SELECT_TOL of the highest, each candidate fitted on the first --select-train
  normal images; the choice is printed;
* report on the held-out `test` split: image AUROC for local defects (good vs the four local
  kinds) and for weave changes (good vs finer/coarser), pixel AUROC and PRO (FPR <= 0.3,
  anomalib's AUPRO) over all test images, each with a 95 % bootstrap interval over images
  (pixel AUROC and PRO, point and interval alike, on maps mean-pooled PIXEL_POOL x PIXEL_POOL, a mask
  cell positive where any of its pixels is: the interval is on the number it describes); the raw-pixel baselines (Isolation Forest,
  One-Class SVM, COPOD, ECOD, PyOD KNN on 64 x 64 RGB pixels) and the margin of ours over the
  best of them on local defects and on weave changes, each with a paired bootstrap interval (the
  same resampled images for both AUROCs);
* patch baselines in the same run on the same test images, at the same tiles (the chosen tile
  stride, tiles of the model's resolution): PatchCore on raw pixel patches (`patch_features="pixels"`,
  PATCH_PIXELS px squares every half patch, greedy coreset bank of 10 % of the normal patches capped at the
  detector's bank size, nearest-patch distance, the image's maximum), kNN on the same pixel patches (a
  random bank of the same size, the mean distance to the PIXEL_KNN_K nearest, the image's maximum;
  FAISS for both) and PatchCore on the tiny UNet's DIFT features (`patch_features="dift"`, 3 x 3
  aggregation as PatchCore's, the image's maximum). None of their settings is tuned on val: each
  is the method's own default, fixed before any run. Each gets image AUROC local / weave with the
  same bootstrap intervals, the paired margin of ours over it, and pixel AUROC / PRO on the same pooled
  maps as ours (with intervals for the pixel baselines, the points only for DIFT's); the
  margin over the best of every baseline (PyOD and patch) is reported beside the margin over the best
  classic.
Each held-out run is appended to benchmarks/results/anomaly_defects.json with commit and date, its
per-image results beside it (benchmarks.records). `--timing`: fit on --timing-n
normal images and score --timing-n more with the chosen settings (or the defaults), on --threads,
--timing-repeats times (3): fit_s and score_s are the medians, their ranges beside them.

    OMP_NUM_THREADS=2 python benchmarks/anomaly_defects.py --threads 2 [--seed N] [--protocol benchmarks/protocols/defects.json]

`--seed` is the generator's data seed (and the Isolation Forest's); the timing images keep their own seed 11.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.patches import top_k_mean
from diffmine.core.inputs import ImageInput
from diffmine.datasets.defects import GOOD, generate_defects, read_split
from diffmine.evaluation.anomaly import pixel_auroc, pro_score

RESULTS = Path(__file__).parent / "results"
# Candidates, the cheaper first (a tie keeps the first): DIFT at its default block and timestep, denoising
# errors at the default draws (for comparison); raw pixel patches and the shipped default, VAE cells beside
# pixel patches, so the selection can reach what ships.
GRID = {"patch_features": ("vae", "dift", "denoise", "pixels", "vae+pixels"), "patch_pool": (1, 3),
        "tile_stride": (64, 32), "top_k": (1, 4, 16)}
# A costlier candidate must beat a cheaper one by more than this on the val mean: on 8 val images per
# kind a difference below it is one or two images' worth (and a 3x slower stride is not worth that).
SELECT_TOL = 0.005
BOOT = 2000
PIXEL_BOOT = 200
PIXEL_POOL = 4  # pixel metrics on 4 x 4 mean-pooled maps: 200 bootstrap resamples of full maps take too long
# patch baselines (fixed before any run, not tuned on val): PatchCore on pixels / DIFT as the detector
# builds them, kNN on the pixel patches with PyOD KNN's n_neighbors
PATCH_PIXELS = 8  # px of a pixel patch: the detector's default patch_size
PIXEL_KNN_K = 5
PATCH_BASELINES = {"patchcore-pixels": dict(patch_features="pixels", patch_size=PATCH_PIXELS, patch_pool=1,
                                            top_k=1, image_score="top-k"),
                   "knn-pixel-patches": dict(patch_features="pixels", patch_size=PATCH_PIXELS, patch_pool=1),
                   "patchcore-dift": dict(patch_features="dift", patch_pool=3, top_k=1, image_score="top-k")}
PIXEL_INTERVALS = ("patchcore-pixels", "knn-pixel-patches")  # pixel AUROC / PRO with intervals; DIFT: points


def split(data: Path, name: str, groups=("local", "weave")):
    """The good images and those of `groups` (this benchmark's; generator version 2 added "global")."""
    rows = [r for r in read_split(data / name) if r["group"] is None or r["group"] in groups]
    paths = [str(data / name / r["file_name"]) for r in rows]
    return rows, paths


def group_auroc(rows, scores, group) -> float:
    sel = np.array([r["group"] in (group, None) for r in rows])
    y = np.array([r["label"] != GOOD for r in rows])[sel]
    return float(roc_auc_score(y, np.asarray(scores)[sel]))


def boot_ci(rows, fn, n=BOOT, seed=0):
    """95 % percentile interval of fn(index array) over images resampled with replacement."""
    g = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = g.integers(0, len(rows), len(rows))
        try:
            v = fn(idx)
        except ValueError:  # a resample without both classes
            continue
        if np.isfinite(v):
            vals.append(v)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def sub_auroc(y, s, idx, sel):
    k = idx[sel[idx]]
    return roc_auc_score(y[k], s[k])


def pooled(a: np.ndarray, factor: int = PIXEL_POOL) -> np.ndarray:
    """(n, H, W) -> (n, H / factor, W / factor): the mean of each factor x factor block."""
    n, h, w = a.shape
    return a.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def pixel_estimates(maps: np.ndarray, masks: np.ndarray, pool: int = PIXEL_POOL, n: int = PIXEL_BOOT) -> dict:
    """Pixel AUROC and PRO with their 95 % bootstrap intervals over images, the point and the interval both
    on the same maps mean-pooled pool x pool (a pooled mask cell is positive where any pixel of it is)."""
    m, k = pooled(maps, pool), pooled(masks.astype(np.float32), pool) > 0
    return {"pixel_auroc": pixel_auroc(m, k), "pixel_auroc_ci": boot_ci(m, lambda i: pixel_auroc(m[i], k[i]), n=n),
            "pro": pro_score(m, k), "pro_ci": boot_ci(m, lambda i: pro_score(m[i], k[i]), n=n),
            "pixel_maps": f"{pool}x{pool} mean-pooled"}


def baselines(x_train, x_test, seed):
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.ocsvm import OCSVM

    made = {"iforest": IForest(random_state=seed), "ocsvm": OCSVM(), "copod": COPOD(), "ecod": ECOD(),
            "knn-pixels": KNN()}
    return {name: det.fit(x_train).decision_function(x_test) for name, det in made.items()}


def pixel_patch_scores(det, train, paths, k=PIXEL_KNN_K) -> tuple[dict, dict]:
    """PatchCore and kNN on det's patch features (a detector fitted for its tiles and features), from one
    extraction of the training and test patches: {name: image scores}, {name: maps stitched as det's}.

    patchcore-pixels: the bank det's fit would keep (the same greedy coreset of the same half-precision
    patches, det's coreset_ratio and bank_size, det's seed), each patch's distance to its nearest bank
    patch (the same scores as det.decision_function, without the training images' leave-one-out scores
    that only set a threshold); knn-pixel-patches: a random bank of the same size, each patch's mean
    distance to its k nearest. The image score is the maximum."""
    import faiss

    from diffmine.apps.anomaly.patches import bank_size_for, greedy_coreset, random_subset, stitch

    kind = det.kind
    inp = ImageInput(train)
    pool = torch.cat([v.reshape(-1, v.shape[-1]).half() for grp in det.groups(inp)
                      for v in kind.tile_patches(inp, grp)])
    n = bank_size_for(len(pool), det.coreset_ratio, det.bank_size)
    picks = {"patchcore-pixels": (greedy_coreset(pool, n, int(det.seed)), 1),
             "knn-pixel-patches": (random_subset(len(pool), n, int(det.seed)), k)}
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    index = {}
    for name, (pick, _) in picks.items():
        index[name] = faiss.IndexFlatL2(pool.shape[1])
        index[name].add(np.ascontiguousarray(pool[torch.from_numpy(pick)].float().numpy()))
    del pool
    test = ImageInput(paths)
    boxes, (h, w, _) = kind.tile_boxes(), det.geometry_
    scores = {name: [] for name in picks}
    maps = {name: [] for name in picks}
    for grp in det.groups(test):
        for v in kind.tile_patches(test, grp):
            x = np.ascontiguousarray(v.reshape(-1, v.shape[-1]).numpy(), dtype=np.float32)
            for name, (_, kk) in picks.items():
                d = np.sqrt(np.maximum(index[name].search(x, min(kk, index[name].ntotal))[0], 0)).mean(axis=1)
                scores[name].append(float(d.max()))
                maps[name].append(stitch(torch.from_numpy(d.reshape(v.shape[:3])).float(), boxes, (h, w)).numpy())
    return {m: np.array(v) for m, v in scores.items()}, {m: np.stack(v) for m, v in maps.items()}


def patch_baselines(train, paths, chosen, progress=False) -> tuple[dict, dict, dict]:
    """{name: image scores}, {name: maps}, {name: seconds} of PATCH_BASELINES at the chosen tile stride."""
    scores, maps, seconds = {}, {}, {}
    stride = dict(tile_stride=chosen["tile_stride"]) if "tile_stride" in chosen else {}
    t0 = time.perf_counter()
    # the pixel baselines share one extraction of the patches; the detector only gives the tiles and features
    det = DiffusionDetector(model="tiny", score="patches", progress=progress, **stride,
                            **PATCH_BASELINES["patchcore-pixels"]).fit(train[:1])
    got = pixel_patch_scores(det, train, paths)
    for name in got[0]:
        scores[name], maps[name] = got[0][name], got[1][name]
        seconds[name] = round((time.perf_counter() - t0) / 2, 1)  # the two together, halved
    for name, settings in PATCH_BASELINES.items():
        if name in scores:
            continue
        t0 = time.perf_counter()
        det = DiffusionDetector(model="tiny", score="patches", progress=progress, **stride, **settings).fit(train)
        scores[name], maps[name] = det.decision_function(paths), det.anomaly_maps(paths)
        seconds[name] = round(time.perf_counter() - t0, 1)
    print("patch baselines, seconds:", json.dumps(seconds), flush=True)
    return scores, maps, seconds


def _r(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "(no interval)"


def pixel_array(paths, side=64):
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BILINEAR),
                                np.float32).ravel() / 255 for p in paths])


def select(data, train, n_select, progress):
    """Settings chosen on the labelled val split (candidates fitted on the first n_select normal images)."""
    rows, paths = split(data, "val")
    masks = np.stack([r["mask"] for r in rows])
    table = []
    # imports and the model's first load, outside the timed candidates (the first would pay for them)
    DiffusionDetector(model="tiny", score="patches").fit(train[:2])
    fitted = [dict(patch_features=f, patch_pool=p, tile_stride=st) for f in GRID["patch_features"]
              for p in GRID["patch_pool"] for st in GRID["tile_stride"]]
    for settings in fitted:
        t0 = time.perf_counter()
        det = DiffusionDetector(model="tiny", score="patches", progress=progress, **settings).fit(train[:n_select])
        maps = det.anomaly_maps(paths)
        pix = pixel_auroc(maps, masks)
        # every image's patch distances, once: the image score for each top_k is computed from them
        inp, bank = ImageInput(paths), det.kind.bank()
        dists = [bank.distances(v.reshape(-1, v.shape[-1]).numpy())
                 for g in det.groups(inp) for v in det.kind.tile_patches(inp, g)]
        seconds = time.perf_counter() - t0
        for k in GRID["top_k"]:
            s = np.array([top_k_mean(d, k) for d in dists])
            row = {**settings, "top_k": k, "local": group_auroc(rows, s, "local"),
                   "weave": group_auroc(rows, s, "weave"), "pixel": pix, "fit_and_val_s": round(seconds, 1)}
            row["mean"] = (row["local"] + row["weave"] + row["pixel"]) / 3
            table.append(row)
            print("select", json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()}),
                  flush=True)
    return {k: pick(table)[k] for k in GRID}, table


def pick(table: list[dict]) -> dict:
    """The cheapest candidate (fit and val seconds) within SELECT_TOL of the best mean; of equal cost (the
    top-k choices of one fit) the higher mean, then the grid's order."""
    top = max(row["mean"] for row in table)
    near = [row for row in table if row["mean"] >= top - SELECT_TOL]
    return min(near, key=lambda row: (row["fit_and_val_s"], -row["mean"]))  # min keeps the first of equals


def timing(data_root: Path, settings: dict, n: int, threads: int, repeats: int = 3) -> dict:
    """Fit on n normal images and score n more, `repeats` times (a new detector each time): fit_s and
    score_s are the medians, with their range and every timing beside them."""
    out = generate_defects(data_root / f"timing{n}", n_train=2 * n, n_val=1, n_test=1, size=256, seed=11)
    normal = sorted(str(p) for p in (out / "train" / "images").rglob("*.png"))
    fits, scores = [], []
    for _ in range(repeats):
        det = DiffusionDetector(model="tiny", score="patches", progress=True, **settings)
        t0 = time.perf_counter()
        det.fit(normal[:n])
        fits.append(round(time.perf_counter() - t0, 1))
        t0 = time.perf_counter()
        det.decision_function(normal[n:])
        scores.append(round(time.perf_counter() - t0, 1))
        print(f"timing {len(fits)} of {repeats}: fit {fits[-1]} s, score {scores[-1]} s ({n} images each)", flush=True)
    return {"timing_n": n, "threads": threads, "fit_s": round(float(np.median(fits)), 1),
            "score_s": round(float(np.median(scores)), 1),
            "fit_s_range": [min(fits), max(fits)], "score_s_range": [min(scores), max(scores)],
            "timing_repeats": repeats, "fit_s_each": fits, "score_s_each": scores}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/tmp/diffmine-bench/defects")
    ap.add_argument("--n-train", type=int, default=200, help="normal training images (fit)")
    ap.add_argument("--n-val", type=int, default=8, help="val images per defect kind (2x good)")
    ap.add_argument("--n-test", type=int, default=12, help="test images per defect kind (2x good)")
    ap.add_argument("--select-train", type=int, default=100, help="normal images the candidates are fitted on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", action="store_true", help="also time fit and score of --timing-n images each")
    ap.add_argument("--timing-n", type=int, default=1000)
    ap.add_argument("--timing-repeats", type=int, default=3, help="timings of fit and score (the median is reported)")
    ap.add_argument("--settings", help="JSON of settings to use instead of choosing them on val")
    ap.add_argument("--grid", help="JSON replacing candidate lists of the selection grid, e.g. "
                    '\'{"tile_stride": [64]}\'')
    from benchmarks.records import protocol_argument, save_run

    protocol_argument(ap)
    args = ap.parse_args(argv)
    if args.grid:
        GRID.update({k: tuple(v) for k, v in json.loads(args.grid).items()})
    torch.set_num_threads(args.threads)
    data = generate_defects(args.data, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    train = sorted(str(p) for p in (data / "train" / "images").rglob("*.png"))

    t0 = time.perf_counter()
    if args.settings:
        chosen, table = json.loads(args.settings), []
    else:
        chosen, table = select(data, train, args.select_train, progress=False)
    print("chosen on val:", json.dumps(chosen), flush=True)
    select_s = time.perf_counter() - t0

    rows, paths = split(data, "test")
    masks = np.stack([r["mask"] for r in rows])
    det = DiffusionDetector(model="tiny", score="patches", progress=True, **chosen).fit(train)
    scores = det.decision_function(paths)
    maps = det.anomaly_maps(paths)
    y = np.array([r["label"] != GOOD for r in rows])
    local = np.array([r["group"] in ("local", None) for r in rows])
    weave = np.array([r["group"] in ("weave", None) for r in rows])
    res = {"image_auroc_local": group_auroc(rows, scores, "local"),
           "image_auroc_weave": group_auroc(rows, scores, "weave"),
           **pixel_estimates(maps, masks)}
    res["image_auroc_local_ci"] = boot_ci(rows, lambda i: sub_auroc(y, scores, i, local))
    res["image_auroc_weave_ci"] = boot_ci(rows, lambda i: sub_auroc(y, scores, i, weave))

    base = baselines(pixel_array(train), pixel_array(paths), args.seed)
    base_auc = {name: {"local": group_auroc(rows, s, "local"), "weave": group_auroc(rows, s, "weave")}
                for name, s in base.items()}
    for group, sel in (("local", local), ("weave", weave)):  # the margin over the best classic, per group
        best = max(base_auc, key=lambda n: base_auc[n][group])
        res[f"best_classic_{group}"] = best
        res[f"best_classic_auroc_{group}"] = base_auc[best][group]
        res[f"margin_{group}"] = res[f"image_auroc_{group}"] - base_auc[best][group]
        res[f"margin_{group}_ci"] = boot_ci(rows, lambda i: sub_auroc(y, scores, i, sel)
                                            - sub_auroc(y, base[best], i, sel))
    res["baselines"] = base_auc
    res["chosen"] = chosen
    print("baselines (image AUROC local / weave):",
          ", ".join(f"{n} {v['local']:.3f}/{v['weave']:.3f}" for n, v in base_auc.items()), flush=True)

    # the patch baselines, same test images, same tiles; each beside ours with paired margins
    patch, patch_maps, patch_s = patch_baselines(train, paths, chosen)
    res["patch_baselines"] = {}
    for name, s in patch.items():
        row = {}
        for group, sel in (("local", local), ("weave", weave)):
            row[group] = group_auroc(rows, s, group)
            row[f"{group}_ci"] = boot_ci(rows, lambda i: sub_auroc(y, s, i, sel))
            row[f"margin_{group}"] = res[f"image_auroc_{group}"] - row[group]
            row[f"margin_{group}_ci"] = boot_ci(rows, lambda i: sub_auroc(y, scores, i, sel) - sub_auroc(y, s, i, sel))
        if name in PIXEL_INTERVALS:
            row.update(pixel_estimates(patch_maps[name], masks))
        else:  # the point only, on the same pooled maps (each interval's 200 resamples take minutes)
            m, k = pooled(patch_maps[name]), pooled(masks.astype(np.float32)) > 0
            row.update({"pixel_auroc": pixel_auroc(m, k), "pro": pro_score(m, k),
                        "pixel_maps": f"{PIXEL_POOL}x{PIXEL_POOL} mean-pooled"})
        row["seconds"] = patch_s[name]
        res["patch_baselines"][name] = row
        print(f"{name}: image AUROC local {row['local']:.3f} {_r(row['local_ci'])}, weave {row['weave']:.3f} "
              f"{_r(row['weave_ci'])}; ours - it: local {row['margin_local']:+.3f} {_r(row['margin_local_ci'])}, "
              f"weave {row['margin_weave']:+.3f} {_r(row['margin_weave_ci'])}; pixel AUROC {row['pixel_auroc']:.3f} "
              f"{_r(row.get('pixel_auroc_ci'))}, PRO {row['pro']:.3f} {_r(row.get('pro_ci'))}", flush=True)
    every = {**base, **patch}  # the margin over the best of every baseline, PyOD and patch alike
    for group, sel in (("local", local), ("weave", weave)):
        best = max(every, key=lambda n: group_auroc(rows, every[n], group))
        res[f"best_baseline_{group}"] = best
        res[f"margin_over_best_baseline_{group}"] = res[f"image_auroc_{group}"] - group_auroc(rows, every[best], group)
        res[f"margin_over_best_baseline_{group}_ci"] = boot_ci(rows, lambda i: sub_auroc(y, scores, i, sel)
                                                               - sub_auroc(y, every[best], i, sel))

    items = [{"image": r["file_name"], "label": r["label"], "group": r["group"] or "", "score": f"{scores[i]:.6g}",
              "map_max": f"{maps[i].max():.6g}",
              "map_mean_in_mask": f"{float(maps[i][masks[i]].mean()):.6g}" if masks[i].any() else "",
              **{n: f"{base[n][i]:.6g}" for n in base}, **{n: f"{patch[n][i]:.6g}" for n in patch},
              **{f"{n}_map_max": f"{patch_maps[n][i].max():.6g}" for n in patch}} for i, r in enumerate(rows)]
    if args.timing:
        res.update(timing(Path(args.data).parent, chosen, args.timing_n, args.threads, args.timing_repeats))
    save_run("anomaly_defects", {"select_s": round(select_s, 1), "selection": table, **res}, items,
             protocol=vars(args), protocol_file=args.protocol)
    last = {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list) else v)
            for k, v in res.items() if k not in ("baselines", "chosen", "patch_baselines")}
    last["fit_s_1000"] = res.get("fit_s") if res.get("timing_n") == 1000 else None
    last["score_s_1000"] = res.get("score_s") if res.get("timing_n") == 1000 else None
    print(json.dumps(last))


if __name__ == "__main__":
    main()
