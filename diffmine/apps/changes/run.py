"""`diffmine changes`: the changes that are consistent across many images (METHOD.md §5).

    run_changes(ChangesConfig(model=MODEL_DIR, translations=TR_DIR, out=CH_DIR))

1. every translation x_{src->c} of TR_DIR is scored by the typicality engine under its own
   target prompt, T(x_{src->c} | c) (streamed; an image's maps leave memory once its patches are chosen);
2. patch co-typicality = median over the targets of the patch means (`cotypicality.py`); the
   `per_image` most co-typical non-overlapping patches of each image, then the `top` overall;
3. each kept patch is described by the DIFT features of the source and of every translation at
   the same box (source under its own prompt, each translation under its target's), concatenated
   in label order, so a patch is a sequence across labels;
4. FAISS k-means; clusters ranked by the median co-typicality of their members, members
   nearest-to-centroid first; report.html shows each cluster as rows of patch sequences, one
   column per label; clusters.csv lists every member.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmine.report.pictures import crop, safe_name
from diffmine.core.files import replace_dir, write_text
from diffmine.core.settings import ConfigError, save_config
from diffmine.core.errors import DataError
from mining.cluster import FaissKMeans
from mining.features import DiftExtractor, l2_normalize, pool_boxes
from typicality.formula import upsample
from mining.patches import Patches, default_patch_size, select_patches, top_per_label_index

from diffmine.apps.changes.config import ChangesConfig
from diffmine.apps.changes.cotypicality import cotypicality_scores
from typicality.fingerprints import model_fingerprint
from diffmine.report.pictures import save_png, to_uint8
from diffmine.apps.changes.report import write_report
from diffmine.core.handoffs import TRANSLATIONS_META as META

CHUNK = 16  # images decoded per typicality / feature chunk


def _read_translations(folder: Path, model: str) -> tuple[dict, dict, dict[str, dict[str, str]]]:
    """(translate config, meta, {image id: {target: file}}) of a translations folder made with `model`."""
    table = folder / "translations.csv"
    if not table.is_file() or not (folder / META).is_file() or not (folder / "config.json").is_file():
        raise DataError(f"{folder}: not a translations folder (no translations.csv / {META}); "
                        "run `diffmine translate --to all` first")
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("model_fingerprint") != model_fingerprint(model):
        raise DataError(f"{folder}: the translations were made with another model ({meta.get('model')}), "
                        f"not {model}")
    tcfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    files: dict[str, dict[str, str]] = {}
    with open(table, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            if not (folder / row["file"]).is_file():
                raise DataError(f"{table} row {n}: file '{row['file']}' does not exist")
            files.setdefault(row["image_id"], {})[row["target"]] = row["file"]
    return tcfg, meta, files


def _load_png(path: Path, res: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB").resize((res, res), Image.BICUBIC) if img.size != (res, res)
                       else img.convert("RGB"), dtype=np.float32)
    return a.transpose(2, 0, 1) / 127.5 - 1.0


def run_changes(config: ChangesConfig, progress: bool = True) -> Path:
    """Mine consistent changes from a translations folder; returns the output folder (report.html inside)."""
    from diffmine.core.bundle import SDBundle
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.prompts import PromptTemplate
    from typicality.engine import TypicalityEstimator

    cfg = config
    cfg.validate()
    folder = Path(cfg.translations)
    if not Path(cfg.model).is_dir():
        raise ConfigError("model", f"{cfg.model}: model folder does not exist")
    if not folder.is_dir():
        raise ConfigError("translations", f"{folder}: folder does not exist")
    tcfg, meta, files = _read_translations(folder, cfg.model)
    dataset = LabeledImages(tcfg["data"], tcfg.get("label_column", "label"))
    res = int(meta["resolution"])
    k = int(cfg.patch or default_patch_size(res))
    if k > res:
        raise ConfigError("patch", f"{k} px is larger than the images ({res} px)")

    # -- which images: those translated to every label but their own ---------------------------
    columns = sorted(set(meta["labels"]))
    records, skipped = [], 0
    for r in dataset:
        if r.image_id not in files:
            continue
        if set(files[r.image_id]) | {r.labels[0]} >= set(columns):
            records.append(r)
        else:
            skipped += 1
    if not records:
        raise DataError(f"{folder}: no image is translated to every label ({', '.join(columns)}); "
                        "run `diffmine translate --to all`")
    if skipped:
        warnings.warn(f"{skipped} image(s) not translated to every label are left out", stacklevel=2)
    targets = {r.image_id: [c for c in columns if c != r.labels[0]] for r in records}

    bundle = SDBundle.from_pretrained(cfg.model).eval()
    prompts = PromptTemplate.load(cfg.model)
    estimator = TypicalityEstimator(bundle, prompts, draws=cfg.draws, t_range=tuple(cfg.t_range), seed=cfg.seed,
                                    batch_size=cfg.batch_size)

    # -- 1-2. typicality of every translation under its target; co-typical patches per image --------
    index = {r.image_id: n for n, r in enumerate(records)}
    pending: dict[str, dict[str, np.ndarray]] = {}
    per_image: list[Patches] = []
    per_target: dict[int, dict[str, float]] = {}  # patch typicality under each target, by patch row
    n_rows = 0

    def chunks():
        for s in range(0, len(records), CHUNK):
            ids, imgs, conds = [], [], []
            for r in records[s:s + CHUNK]:
                for c in targets[r.image_id]:
                    ids.append(f"{r.image_id}\x00{c}")
                    imgs.append(_load_png(folder / files[r.image_id][c], res))
                    conds.append([c])
            yield ids, torch.from_numpy(np.stack(imgs)), conds

    bar = tqdm(total=sum(len(t) for t in targets.values()), desc=f"typicality of translations ({cfg.draws} draws)",
               unit="img", disable=not progress)
    for result in estimator.run(chunks()):
        image_id, target = result.image_id.split("\x00")
        pending.setdefault(image_id, {})[target] = upsample(torch.from_numpy(result.diff[0]), (res, res)).numpy()
        bar.update(1)
        if len(pending[image_id]) == len(targets[image_id]):
            done = pending.pop(image_id)
            maps = np.stack([done[c] for c in targets[image_id]])
            each, score = cotypicality_scores(maps, k)
            p = select_patches(score[None], k, cfg.per_image, "top", offset=index[image_id])
            for j in range(len(p)):
                x0, y0 = int(p.box[j, 0]), int(p.box[j, 1])
                per_target[n_rows + j] = {c: float(each[n, y0, x0]) for n, c in enumerate(targets[image_id])}
            n_rows += len(p)
            per_image.append(p)
    bar.close()
    patches = Patches.concat(per_image)
    if len(patches) == 0:
        raise DataError(f"{folder}: no patch could be selected")
    keep = top_per_label_index(patches, cfg.top)
    kept = patches.take(keep)
    kept_typ = [per_target[int(i)] for i in keep]

    # -- 3. DIFT of the source and every translation, pooled at the same boxes ---------------------
    extractor = DiftExtractor(bundle, t=cfg.dift_t, block=cfg.dift_block, draws=cfg.dift_draws, seed=cfg.seed)
    used = np.unique(kept.image)
    slot = {int(i): n for n, i in enumerate(used)}
    pixels = np.zeros((len(used), len(columns), res, res, 3), np.uint8)  # each image under every label
    feats: np.ndarray | None = None
    for s in tqdm(range(0, len(used), CHUNK), desc="DIFT features", unit="chunk", disable=not progress):
        recs = [records[int(i)] for i in used[s:s + CHUNK]]
        got, src = dataset.load_arrays(res, recs)
        if len(got) != len(recs):
            raise DataError(f"{dataset.root}: an image became unreadable")
        stack = np.zeros((len(recs), len(columns), 3, res, res), np.float32)
        for n, r in enumerate(recs):
            for j, c in enumerate(columns):
                stack[n, j] = src[n] if c == r.labels[0] else _load_png(folder / files[r.image_id][c], res)
        flat = torch.from_numpy(stack.reshape(-1, 3, res, res))
        fmaps = extractor(flat, [prompts.prompt(c) for _ in recs for c in columns])
        fmaps = fmaps.view(len(recs), len(columns), *fmaps.shape[1:])
        rows = np.flatnonzero(np.isin(kept.image, used[s:s + CHUNK]))
        local = np.array([slot[int(i)] - s for i in kept.image[rows]], dtype=np.int64)
        parts = [pool_boxes(fmaps[:, j], local, kept.box[rows], res).numpy() for j in range(len(columns))]
        f = l2_normalize(np.concatenate(parts, axis=1))
        if feats is None:
            feats = np.zeros((len(kept), f.shape[1]), np.float32)
        feats[rows] = f
        for n in range(len(recs)):
            pixels[s + n] = np.stack([to_uint8(stack[n, j]) for j in range(len(columns))])

    # -- 4. clusters, ranked by median co-typicality -----------------------------------------------
    km = FaissKMeans(n_clusters=cfg.clusters, random_state=cfg.seed).fit(feats)
    dist = np.sqrt(((feats - km.cluster_centers_[km.labels_]) ** 2).sum(1))
    clusters = []
    for c in range(km.n_clusters_):
        m = np.flatnonzero(km.labels_ == c)
        n_img = len(np.unique(kept.image[m]))
        if len(m) < cfg.min_members or n_img < cfg.min_images:
            continue
        m = m[np.lexsort((-kept.score[m], dist[m]))]
        clusters.append({"id": c, "members": m, "median": float(np.median(kept.score[m])), "n_images": n_img})
    clusters.sort(key=lambda d: (-d["median"], -len(d["members"]), d["id"]))

    # -- 5. outputs ---------------------------------------------------------------------------
    final = Path(cfg.out)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = final.with_name(f".{final.name}.tmp-{os.getpid()}")  # written whole, then moved into place
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        table, doc_clusters = [], []
        for rank, cl in enumerate(clusters):
            shown = []
            for j, mi in enumerate(cl["members"]):
                r = records[int(kept.image[mi])]
                box = [int(v) for v in kept.box[mi]]
                entry = {"cluster_rank": rank, "cluster_id": cl["id"], "median_cotypicality": cl["median"],
                         "cluster_size": len(cl["members"]), "cluster_images": cl["n_images"], "member_rank": j,
                         "image_id": r.image_id, "source_label": r.labels[0], "x0": box[0], "y0": box[1],
                         "x1": box[2], "y1": box[3], "cotypicality": float(kept.score[mi]), "distance": float(dist[mi]),
                         **{f"typicality_{c}": kept_typ[mi].get(c, "") for c in columns}}
                table.append(entry)
                if j < cfg.show:
                    cells = []
                    for jc, c in enumerate(columns):
                        f = f"patches/c{rank:03d}/m{j:03d}_{safe_name(c)}.png"
                        save_png(out / f, np.ascontiguousarray(crop(pixels[slot[int(kept.image[mi])], jc], box)))
                        cells.append({"file": f, "label": c, "source": c == r.labels[0],
                                      "typicality": kept_typ[mi].get(c)})
                    shown.append({"image_id": r.image_id, "source_label": r.labels[0], "box": box,
                                  "cotypicality": float(kept.score[mi]), "cells": cells})
            doc_clusters.append({"rank": rank, "median": cl["median"], "n_members": len(cl["members"]),
                                 "n_images": cl["n_images"], "rows": shown})
        buf = io.StringIO()
        fields = ["cluster_rank", "cluster_id", "median_cotypicality", "cluster_size", "cluster_images", "member_rank",
                  "image_id", "source_label", "x0", "y0", "x1", "y1", "cotypicality", "distance"] + \
            [f"typicality_{c}" for c in columns]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        write_text(out / "clusters.csv", buf.getvalue())
        summary = {"translations": str(folder), "method": tcfg.get("method"), "images": len(records),
                   "labels": ", ".join(columns), "patch": f"{k} px", "patches kept": len(kept),
                   "clusters (k)": km.n_clusters_, "clusters kept": len(clusters), "typicality draws": cfg.draws,
                   "t range": f"{cfg.t_range[0]}-{cfg.t_range[1]}"}
        write_report(out / "report.html", columns, doc_clusters, summary)
        save_config(cfg, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    replace_dir(out, final)
    return final


