"""The mining stage: typicality maps -> typical patches -> features -> ranked clusters -> report.

    run_mining(model=MODEL_DIR, data=DATA_DIR, typicality=TYP_DIR, out=MINE_DIR, config=MineConfig())

1. maps pass (images in chunks, each (image, own label) map read once from the store):
   patch scores by box filter, the top `per_image` non-overlapping patches per map, the
   least-typical and random baselines, and -- when the data carries ground truth -- the map
   metrics and the element kind each selected patch hits.
2. the `per_label` most typical patches of each label.
3. images pass: every image that contributes a patch is decoded once; its DIFT feature map is
   computed once (label prompt, seeded draws) and pooled in each of its patch boxes.
4. FAISS k-means per label; clusters filtered by member and image counts, ranked by median
   typicality; members nearest-to-centroid first.
5. clusters.csv / clusters.json, patch crops, heatmap overlays, a PNG grid per label,
   report.html and metrics.json (with ground truth).
"""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.groundtruth import has_ground_truth, record_elements
from evaluation.metrics import MetricsAccumulator, cluster_purity, patch_kinds
from evaluation.pictures import safe_name, save_grid, save_heatmap_pair, save_patch
from finetune.dataset import LabeledImages
from finetune.errors import DataError

from .cluster import FaissKMeans
from .features import DIFT_DRAWS, ClipPatchFeatures, DiftExtractor, pool_boxes
from .patches import Patches, default_patch_size, patch_scores, select_patches, top_per_label_index
from .report import write_html

CSV_COLUMNS = ["label", "cluster_rank", "cluster_id", "median_typicality", "cluster_size", "cluster_images",
               "member_rank", "image_id", "x0", "y0", "x1", "y1", "typicality", "distance", "element_kind",
               "patch_file", "heatmap_file"]


@dataclass
class MineConfig:
    patch: int | None = None  # px; None: default_patch_size(resolution), 50 px at 256 (METHOD.md §3)
    per_image: int = 5  # METHOD.md §3
    per_label: int = 1000  # METHOD.md §3
    clusters: int = 32  # METHOD.md §4
    feature: str = "dift"  # "dift" or "clip"
    dift_t: int = 161  # METHOD.md §4
    dift_block: int = 1  # METHOD.md §4
    clip_model: str | None = None
    min_members: int = 3
    min_images: int = 2
    seed: int = 0
    n_iter: int = 20
    spherical: bool = True
    dift_draws: int = DIFT_DRAWS  # METHOD.md §4: 8
    batch_size: int = 8  # images per feature forward (x dift_draws UNet samples)
    map_batch: int = 64  # maps per patch-scoring chunk
    show: int = 12  # members shown per cluster in the report
    grid_rows: int = 6  # METHOD.md §4: figures show the top 5-6 clusters...
    grid_cols: int = 7  # ...6-7 patches a row
    baselines: int = 12  # random / least-typical patches shown per label

    def validate(self) -> None:
        for name in ("per_image", "per_label", "clusters", "n_iter", "min_members", "min_images", "dift_draws",
                     "batch_size", "map_batch"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.patch is not None and self.patch < 1:
            raise DataError(f"--patch must be >= 1 px, got {self.patch}")
        if self.feature not in ("dift", "clip"):
            raise DataError(f"--feature must be 'dift' or 'clip', got {self.feature!r}")


def _open_store(typicality):
    if hasattr(typicality, "map") and hasattr(typicality, "pairs"):
        return typicality
    from typicality.store import TypicalityStore

    if not Path(typicality).exists():
        raise DataError(f"{typicality}: typicality folder does not exist")
    return TypicalityStore.open(typicality)


def _load_bundle(model):
    from finetune.bundle import SDBundle
    from finetune.prompts import PromptTemplate

    if isinstance(model, SDBundle):
        return model.eval(), PromptTemplate()
    if model is None:
        raise DataError("--feature dift needs --model (the finetuned diffusers folder)")
    return SDBundle.from_pretrained(model).eval(), PromptTemplate.load(model)


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def run_mining(model, data, typicality, out, config: MineConfig | None = None, label_column: str = "label",
               progress: bool = True) -> Path:
    """Mine typical visual elements; returns the output folder (report.html inside)."""
    cfg = config or MineConfig()
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data if isinstance(data, LabeledImages) else LabeledImages(data, label_column=label_column)
    store = _open_store(typicality)
    res = int(store.meta["resolution"])
    k = int(cfg.patch or default_patch_size(res))
    if k > res:
        raise DataError(f"--patch {k} px is larger than the processing resolution {res} px")

    # -- which maps: each image with each of its own labels --------------------------------
    stored = {tuple(p) for p in store.pairs()}
    pairs, missing = [], 0
    for i, r in enumerate(dataset.records):
        for lab in r.labels:
            if (r.image_id, lab) in stored:
                pairs.append((i, lab))
            else:
                missing += 1
    if not pairs:
        raise DataError(f"{typicality}: no typicality map for any image of {dataset.root} "
                        "(was the store computed on this data?)")
    if missing:
        warnings.warn(f"{missing} (image, label) pair(s) of the data have no typicality map; skipped", stacklevel=2)
    pair_img = np.array([i for i, _ in pairs], dtype=np.int64)
    pair_lab = [lab for _, lab in pairs]
    labels = sorted(set(pair_lab))
    with_gt = has_ground_truth(dataset.records)
    extractor = _make_extractor(cfg, model, res)  # fail fast on a bad model or CLIP setting

    # -- 1. maps pass -----------------------------------------------------------------------
    acc = MetricsAccumulator() if with_gt else None
    tops, lows, rands, kinds_top, kinds_low, kinds_rand = [], [], [], [], [], []
    gen = torch.Generator().manual_seed(cfg.seed)
    chunk = max(1, cfg.map_batch)
    for start in tqdm(range(0, len(pairs), chunk), desc="patch typicality", unit="chunk", disable=not progress):
        idx = range(start, min(start + chunk, len(pairs)))
        maps = np.stack([np.asarray(store.map(dataset.records[pair_img[j]].image_id, pair_lab[j]), dtype=np.float32)
                         for j in idx])
        if maps.shape[1:] != (res, res):
            raise DataError(f"{typicality}: maps are {maps.shape[1]}x{maps.shape[2]}, expected {res}x{res}")
        scores = patch_scores(maps, k)
        t = select_patches(scores, k, cfg.per_image, "top", offset=start)
        b = select_patches(scores, k, cfg.per_image, "bottom", offset=start)
        r = select_patches(scores, k, cfg.per_image, "random", generator=gen, offset=start)
        tops.append(t), lows.append(b), rands.append(r)
        if with_gt:
            kt, kb, kr = ([None] * len(t), [None] * len(b), [None] * len(r))
            elements_cache = {}
            for n, j in enumerate(idx):
                rec = dataset.records[pair_img[j]]
                if pair_img[j] not in elements_cache:
                    elements_cache[pair_img[j]] = record_elements(rec, res, dataset.root)
                el = elements_cache[pair_img[j]]
                if el is None:
                    continue
                char = el.characteristic(pair_lab[j])
                acc.add_map(pair_lab[j], maps[n], el.union(char), el.union(el.shared()) if len(el.shared()) else None,
                            [el.kinds[c] for c in char])
                for p, kk in ((t, kt), (b, kb), (r, kr)):
                    rows = np.flatnonzero(p.image == j)
                    for row, kind in zip(rows, patch_kinds(p.box[rows], el.masks, el.kinds)):
                        kk[row] = kind
            kinds_top += kt
            kinds_low += kb
            kinds_rand += kr
    tops, lows, rands = Patches.concat(tops), Patches.concat(lows), Patches.concat(rands)
    kinds_top = np.array(kinds_top if with_gt else [None] * len(tops), dtype=object)
    kinds_low = np.array(kinds_low if with_gt else [None] * len(lows), dtype=object)
    kinds_rand = np.array(kinds_rand if with_gt else [None] * len(rands), dtype=object)

    # -- 2. per label: the most typical patches; baselines ------------------------------------
    label_rows: dict[str, np.ndarray] = {}  # rows of `tops`
    baseline_rows: dict[str, dict[str, tuple[Patches, np.ndarray]]] = {}
    rng = np.random.default_rng(cfg.seed)
    pair_lab_arr = np.array(pair_lab, dtype=object)
    for lab in labels:
        rows = np.flatnonzero(pair_lab_arr[tops.image] == lab)
        label_rows[lab] = rows[top_per_label_index(tops.take(rows), cfg.per_label)]
        low_rows = np.flatnonzero(pair_lab_arr[lows.image] == lab)
        low_rows = low_rows[np.argsort(lows.score[low_rows], kind="stable")[:cfg.baselines]]
        rand_rows = np.flatnonzero(pair_lab_arr[rands.image] == lab)
        rand_rows = np.sort(rng.choice(rand_rows, size=min(cfg.baselines, len(rand_rows)), replace=False))
        baseline_rows[lab] = {"random": (rands, rand_rows), "least typical": (lows, low_rows)}

    # -- 3. images pass: decode once, features once per image, pooled per patch ------------------
    all_rows = np.concatenate([label_rows[lab] for lab in labels])
    feat_images = np.unique(pair_img[tops.image[all_rows]])
    base_images = np.unique(np.concatenate([pair_img[p.image[rr]] for lab in labels
                                            for p, rr in baseline_rows[lab].values()] + [np.zeros(0, np.int64)]))
    needed = np.union1d(feat_images, base_images)
    cache_dir = out / ".cache"
    cache_dir.mkdir(exist_ok=True)
    pixels = np.lib.format.open_memmap(cache_dir / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(needed), res, res, 3))
    slot = {int(i): n for n, i in enumerate(needed)}
    feat_of_row = {int(row): n for n, row in enumerate(all_rows)}
    try:
        features = _images_pass(cfg, extractor, dataset, res, needed, feat_images, pixels, tops, all_rows, pair_img,
                                progress)
        doc_labels, table, metric_clusters = _cluster_and_write(
            cfg, out, store, dataset, labels, label_rows, baseline_rows, tops, kinds_top, features, feat_of_row,
            pixels, slot, pair_img, pair_lab, res, progress, with_gt)
    finally:
        del pixels
        shutil.rmtree(cache_dir, ignore_errors=True)

    # -- 5. tables, metrics, report ----------------------------------------------------------
    with open(out / "clusters.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for meta, entry in table:  # entries are final only now (heatmap files are written last)
            row = {**entry, **meta}
            w.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in CSV_COLUMNS})
    summary = {"images": len(dataset), "maps": len(pairs), "labels": len(labels), "resolution": res,
               "patch": k, "per_image": cfg.per_image, "per_label": cfg.per_label, "clusters": cfg.clusters,
               "feature": cfg.feature if cfg.feature == "clip" else f"dift (up_blocks[{cfg.dift_block}], "
                                                                    f"t={cfg.dift_t}, {cfg.dift_draws} draws)",
               "seed": cfg.seed}
    metrics = None
    if with_gt:
        for lab, cls in metric_clusters.items():
            acc.add_clusters(lab, cls)
        for lab in labels:  # do the selected patches land on characteristic elements more than baselines?
            acc.add_patch_kinds(lab, {
                "top": list(kinds_top[label_rows[lab]]),
                "random": list(kinds_rand[pair_lab_arr[rands.image] == lab]),
                "least_typical": list(kinds_low[pair_lab_arr[lows.image] == lab])})
        metrics = acc.result()
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (out / "clusters.json").write_text(json.dumps({
        "config": asdict(cfg), "resolution": res, "patch": k, "data": str(dataset.root),
        "typicality": str(typicality) if isinstance(typicality, (str, Path)) else None,
        "labels": {d["name"]: d["json"] for d in doc_labels},
    }, indent=2, default=_json_default), encoding="utf-8")
    doc = {"title": "diffmine: typical visual elements", "summary": summary,
           "metrics": None if metrics is None else {
               key: (f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else metrics[key])
               for key in ("pointing_game", "pixel_auroc", "elements_recovered", "shared_over_characteristic")},
           "labels": [d["html"] for d in doc_labels]}
    write_html(out / "report.html", doc)
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _make_extractor(cfg: MineConfig, model, res: int):
    """(DIFT extractor, prompt template) or (CLIP patch encoder, None)."""
    if cfg.feature == "clip":
        return ClipPatchFeatures(cfg.clip_model), None
    bundle, prompts = _load_bundle(model)
    if bundle.resolution != res:
        warnings.warn(f"the model was built for {bundle.resolution} px, the maps are {res} px", stacklevel=3)
    return DiftExtractor(bundle, t=cfg.dift_t, block=cfg.dift_block, draws=cfg.dift_draws, seed=cfg.seed,
                         batch_size=cfg.batch_size), prompts


def _images_pass(cfg, extractor, dataset, res, needed, feat_images, pixels, tops, all_rows, pair_img,
                 progress) -> np.ndarray:
    """Decode every needed image once into `pixels`; features of all patches in `all_rows` (rows of tops)."""
    extractor, prompts = extractor
    is_feat = np.isin(needed, feat_images)
    row_img = pair_img[tops.image[all_rows]]  # record index of each patch row
    features = None
    bs = max(1, cfg.batch_size)
    for s in tqdm(range(0, len(needed), bs), desc=f"images + {cfg.feature} features", unit="batch",
                  disable=not progress):
        ids = needed[s:s + bs]
        recs, arr = dataset.load_arrays(res, [dataset.records[i] for i in ids])
        if len(recs) != len(ids):
            raise DataError(f"{dataset.root}: an image became unreadable between the passes")
        pixels[s:s + len(ids)] = np.round((arr.transpose(0, 2, 3, 1) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        fmask = is_feat[s:s + bs]
        if not fmask.any():
            continue
        fid = ids[fmask]
        local = {int(i): n for n, i in enumerate(fid)}
        rows = np.flatnonzero(np.isin(row_img, fid))
        img_local = np.array([local[int(i)] for i in row_img[rows]], dtype=np.int64)
        if cfg.feature == "dift":
            fmaps = extractor(torch.from_numpy(arr[fmask]), [prompts.prompt(dataset.records[i].labels) for i in fid])
            f = pool_boxes(fmaps, img_local, tops.box[all_rows[rows]], res).numpy()
        else:
            f = extractor(torch.from_numpy(arr[fmask]), img_local, tops.box[all_rows[rows]]).numpy()
        if features is None:
            features = np.zeros((len(all_rows), f.shape[1]), dtype=np.float32)
        features[rows] = f
    return features


def _cluster_and_write(cfg, out, store, dataset, labels, label_rows, baseline_rows, tops, kinds_top, features,
                       feat_of_row, pixels, slot, pair_img, pair_lab, res, progress, with_gt):
    doc_labels, table, metric_clusters = [], [], {}
    heat_boxes: dict[tuple[int, str], list] = {}  # (record, label) -> boxes outlined on its heatmap page
    pending_heat: list[tuple[dict, int, str]] = []  # (patch entry, record, label)

    def heat_file(rec: int, lab: str) -> str:
        return f"images/{safe_name(dataset.records[rec].image_id)}__{safe_name(lab)}.png"

    for lab in tqdm(labels, desc="clustering", unit="label", disable=not progress):
        rows = label_rows[lab]
        lab_dir = out / "patches" / safe_name(lab)
        X = features[[feat_of_row[int(r)] for r in rows]]
        km = FaissKMeans(n_clusters=cfg.clusters, n_iter=cfg.n_iter, spherical=cfg.spherical, seed=cfg.seed).fit(X)
        dist = np.sqrt(((X - km.cluster_centers_[km.labels_]) ** 2).sum(1))
        recs = pair_img[tops.image[rows]]
        scores = tops.score[rows]
        clusters = []
        for c in range(km.n_clusters_):
            m = np.flatnonzero(km.labels_ == c)
            n_img = len(np.unique(recs[m]))
            if len(m) < cfg.min_members or n_img < cfg.min_images:
                continue
            m = m[np.lexsort((-scores[m], dist[m]))]  # nearest to the centroid first
            clusters.append({"id": c, "members": m, "median": float(np.median(scores[m])), "n_images": n_img})
        clusters.sort(key=lambda d: (-d["median"], -len(d["members"]), d["id"]))
        html_clusters, json_clusters, grid_rows, mc = [], [], [], []
        for rank, cl in enumerate(clusters):
            m = cl["members"]
            kinds = list(kinds_top[rows[m]])
            majority, purity = cluster_purity(kinds) if with_gt else (None, None)
            mc.append((majority, purity, len(m)))
            members_json, members_html = [], []
            for j, mi in enumerate(m):
                rec = int(recs[mi])
                box = [int(v) for v in tops.box[rows[mi]]]
                patch = lab_dir / f"c{rank:02d}_{j:04d}.png"
                save_patch(pixels[slot[rec]], box, patch)
                entry = {"image_id": dataset.records[rec].image_id, "box": box,
                         "typicality": float(scores[mi]), "distance": float(dist[mi]),
                         "element_kind": kinds[j], "patch_file": _rel(patch, out), "heatmap_file": None}
                if j < cfg.show:
                    heat_boxes.setdefault((rec, lab), []).append((box, "cluster"))
                    pending_heat.append((entry, rec, lab))
                    members_html.append(entry)
                members_json.append(entry)
                table.append(({"label": lab, "cluster_rank": rank, "cluster_id": cl["id"],
                               "median_typicality": cl["median"], "cluster_size": len(m),
                               "cluster_images": cl["n_images"], "member_rank": j,
                               "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}, entry))
            if rank < cfg.grid_rows:
                grid_rows.append([pixels[slot[int(recs[mi])]][tops.box[rows[mi], 1]:tops.box[rows[mi], 3],
                                                             tops.box[rows[mi], 0]:tops.box[rows[mi], 2]]
                                  for mi in m[:cfg.grid_cols]])
            common = {"rank": rank, "cluster_id": cl["id"], "median_typicality": cl["median"],
                      "n_members": len(m), "n_images": cl["n_images"], "majority_kind": majority, "purity": purity}
            html_clusters.append({**common, "members": members_html})
            json_clusters.append({**common, "members": members_json})
        metric_clusters[lab] = mc
        baselines_html, baselines_json = {}, {}
        for name, (p, rr) in baseline_rows[lab].items():
            entries = []
            for j, row in enumerate(rr):
                rec = int(pair_img[p.image[row]])
                box = [int(v) for v in p.box[row]]
                patch = lab_dir / f"{name.replace(' ', '_')}_{j:03d}.png"
                save_patch(pixels[slot[rec]], box, patch)
                entry = {"image_id": dataset.records[rec].image_id, "box": box, "typicality": float(p.score[row]),
                         "patch_file": _rel(patch, out), "heatmap_file": None}
                heat_boxes.setdefault((rec, lab), []).append((box, name))
                pending_heat.append((entry, rec, lab))
                entries.append(entry)
            baselines_html[name] = entries
            baselines_json[name] = entries
        grid = save_grid(grid_rows, out / "grids" / f"{safe_name(lab)}.png") if grid_rows else None
        n_maps = sum(1 for pl in pair_lab if pl == lab)
        summary = {"maps": n_maps, "candidate patches": len(rows), "clusters (k)": km.n_clusters_,
                   "clusters kept": len(clusters)}
        doc_labels.append({
            "name": lab,
            "html": {"name": lab, "anchor": safe_name(lab), "summary": summary, "clusters": html_clusters,
                     "baselines": baselines_html, "grid": _rel(grid, out) if grid else None},
            "json": {"maps": n_maps, "patches": len(rows), "k": km.n_clusters_, "inertia": km.inertia_,
                     "clusters_dropped": km.n_clusters_ - len(clusters), "clusters": json_clusters,
                     "baselines": baselines_json, "grid": _rel(grid, out) if grid else None},
        })

    # heatmap pages: one per (image, label) shown, each map read once more from the store
    for (rec, lab), boxes in tqdm(sorted(heat_boxes.items(), key=lambda kv: (kv[0][0], kv[0][1])),
                                  desc="heatmaps", unit="image", disable=not progress):
        typ = np.asarray(store.map(dataset.records[rec].image_id, lab), dtype=np.float32)
        save_heatmap_pair(pixels[slot[rec]], typ, out / heat_file(rec, lab), boxes)
    for entry, rec, lab in pending_heat:
        entry["heatmap_file"] = heat_file(rec, lab)
    return doc_labels, table, metric_clusters
