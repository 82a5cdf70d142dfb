"""`diffmine changes`: the changes that are consistent across many images (docs/method.md §5).

    run_changes(ChangesConfig(model=MODEL_DIR, translations=TR_DIR, out=CH_DIR))

Per source image (the UNet work, in fixed groups of `group` source images, on the job engine
`core.job`):
1. every translation x_{src->c} is scored by the typicality engine under its own target prompt,
   T(x_{src->c} | c);
2. patch co-typicality = median over the targets of the patch means (`cotypicality.py`); the
   `per_image` most co-typical non-overlapping patches of the image;
3. each of them is described by the DIFT features of the source and of every translation at the
   same box (source under its own prompt, each translation under its target's), concatenated in
   label order, so a patch is a sequence across labels.
Each group's results are stored in CH_DIR/.partial/<key>/ as it finishes: under `accelerate launch`
process i takes groups i::n, and a killed run redoes only the missing groups. Every image is
computed inside its own group with per-image seeds, so the results do not depend on the process
count. Then, on the main process:
4. the `top` most co-typical patches overall; FAISS k-means (`mining.stages.cluster_patches`, mining's stage 3);
   clusters ranked by the median co-typicality of their members, members nearest-to-centroid
   first; report.html shows each cluster as rows of patch sequences, one column per label;
   clusters.csv lists every member. The folder is written whole and moved into place (which
   also removes the partial results).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from diffmine.report.pictures import crop, safe_name
from diffmine.core.files import write_text
from diffmine.core.job import Job, run_job
from diffmine.core.partial import fixed_groups
from diffmine.core.settings import ConfigError
from diffmine.core.errors import DataError
from diffmine.core.dataset import image_array, readable_images
from mining.features import DiftExtractor, l2_normalize, pool_boxes
from typicality.formula import upsample
from mining.patches import Patches, default_patch_size, select_patches, top_per_label_index
from mining.stages import ClusterSettings, cluster_patches

from diffmine.apps.changes.config import ChangesConfig
from diffmine.apps.changes.cotypicality import cotypicality_scores
from typicality.fingerprints import model_fingerprint
from diffmine.core.images import from_tensor_array
from diffmine.report.pictures import save_png
from diffmine.apps.changes.report import write_report
from diffmine.core.handoffs import TRANSLATIONS_META as META

# what a run replaces in --out (the rest is the user's and stays); its stored groups go once it is complete
OUTPUTS = ("report.html", "clusters.csv", "config.json", "patches", ".partial")

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


def _folder_digest(folder: Path, files: dict[str, dict[str, str]]) -> str:
    """sha256 over the translations folder's tables and every translation file's bytes."""
    h = hashlib.sha256()
    for name in ("translations.csv", META, "config.json"):
        h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for image_id in sorted(files):
        for target, f in sorted(files[image_id].items()):
            h.update(f"{image_id}\0{target}\0{f}\0".encode() + (folder / f).read_bytes())
    return h.hexdigest()[:16]


def _label_stack(recs, src: np.ndarray, columns: list[str], folder: Path, files, res: int) -> np.ndarray:
    """(n, labels, 3, res, res): each source image in its own label's column, its translations in the others."""
    stack = np.zeros((len(recs), len(columns), 3, res, res), np.float32)
    for n, r in enumerate(recs):
        for j, c in enumerate(columns):
            stack[n, j] = src[n] if c == r.labels[0] else image_array(folder / files[r.image_id][c], res)
    return stack


class ChangesJob(Job):
    """`diffmine changes` on the job engine: per source image in fixed groups (steps 1-3), then the
    clusters and the report (4-5)."""

    owned = OUTPUTS

    def check(self) -> None:
        """The translations and the images translated to every label, before any model loads."""
        from diffmine.core.dataset import LabeledImages
        from diffmine.core.models import resolve_model

        cfg = self.config
        self.folder = folder = Path(cfg.translations)
        self.model_path = resolve_model(cfg.model)  # 'tiny', a folder or a hub id; one line naming a bad one
        if not folder.is_dir():
            raise ConfigError("translations", f"{folder}: folder does not exist")
        self.tcfg, meta, files = _read_translations(folder, self.model_path)
        # translations are images like any other: the one reader checks them, honouring --skip-bad (an
        # image whose translation is skipped is then not translated to every label: it is left out below)
        good = set(readable_images([folder / f for tr in files.values() for f in tr.values()], cfg.skip_bad, 3))
        self.files = {i: {c: f for c, f in tr.items() if folder / f in good} for i, tr in files.items()}
        self.dataset = LabeledImages(self.tcfg["data"], self.tcfg.get("label_column", "label"), cfg.skip_bad)
        self.res = res = int(meta["resolution"])
        self.k = int(cfg.patch or default_patch_size(res))
        if self.k > res:
            raise ConfigError("patch", f"{self.k} px is larger than the images ({res} px)")

        # -- which images: those translated to every label but their own ---------------------------
        self.columns = columns = sorted(set(meta["labels"]))
        self.records, self.skipped = [], 0
        for r in self.dataset:
            if r.image_id not in self.files:
                continue
            if set(self.files[r.image_id]) | {r.labels[0]} >= set(columns):
                self.records.append(r)
            else:
                self.skipped += 1
        if not self.records:
            raise DataError(f"{folder}: no image is translated to every label ({', '.join(columns)}); "
                            "run `diffmine translate --to all`")

    def load(self, rt) -> None:
        from typicality.engine import TypicalityEstimator

        cfg, columns = self.config, self.columns
        if self.skipped and rt.is_main:
            warnings.warn(f"{self.skipped} image(s) not translated to every label are left out", stacklevel=2)
        self.targets = {r.image_id: [c for c in columns if c != r.labels[0]] for r in self.records}
        self.index = {r.image_id: n for n, r in enumerate(self.records)}
        self.ids, self.phase = list(self.index), f"typicality ({cfg.draws} draws) + DIFT of translations"

        loaded = rt.load(cfg.model)
        self.bundle, self.prompts = loaded.bundle, loaded.prompts
        self.estimator = TypicalityEstimator(self.bundle, self.prompts, draws=cfg.draws, t_range=tuple(cfg.t_range),
                                             seed=cfg.seed, batch_size=cfg.batch_size)
        self.extractor = DiftExtractor(self.bundle, t=cfg.dift_t, block=cfg.dift_block, draws=cfg.dift_draws,
                                       seed=cfg.seed)
        # every prompt encoded once, up front, in one fixed batch: embeddings do not depend on which group comes first
        self.estimator.embed([self.prompts.prompt((c,)) for c in columns])
        self.extractor.embeddings.index([self.prompts.prompt(c) for c in columns])

    def key(self, rt) -> dict:
        from typicality.fingerprints import data_fingerprint

        cfg = self.config
        return {"settings": {n: getattr(cfg, n) for n in ("draws", "t_range", "dift_t", "dift_block", "dift_draws",
                                                          "per_image", "batch_size", "seed", "group")},
                "patch": self.k, "resolution": self.res, "model_fingerprint": model_fingerprint(self.model_path),
                "template": self.prompts.template, "null_prompt": self.prompts.null_prompt,
                "translations": _folder_digest(self.folder, {i: self.files[i] for i in self.index}),
                "data_fingerprint": data_fingerprint(self.records, self.dataset.root),
                "device": rt.device.type, "dtype": str(rt.dtype).replace("torch.", "")}

    def groups(self) -> list[list[str]]:
        return fixed_groups(self.ids, self.config.group)

    # -- 1-3. per source image, in fixed groups: typicality of its translations, patches, DIFT ------
    def compute(self, group: list[str]) -> dict[str, dict[str, np.ndarray]]:
        cfg, folder, files, res, k, columns = self.config, self.folder, self.files, self.res, self.k, self.columns
        targets, dataset, prompts = self.targets, self.dataset, self.prompts
        recs = [self.records[self.index[i]] for i in group]
        ids, imgs, conds = [], [], []
        for r in recs:
            for c in targets[r.image_id]:
                ids.append(f"{r.image_id}\x00{c}")
                imgs.append(image_array(folder / files[r.image_id][c], res))
                conds.append([c])
        maps: dict[str, dict[str, np.ndarray]] = {}
        for result in self.estimator.run([(ids, torch.from_numpy(np.stack(imgs)), conds)]):
            image_id, target = result.image_id.split("\x00")
            maps.setdefault(image_id, {})[target] = upsample(torch.from_numpy(result.diff[0]), (res, res)).numpy()
        got, src = dataset.load_arrays(res, recs)
        if len(got) != len(recs):
            raise DataError(f"{dataset.root}: an image became unreadable")
        stack = _label_stack(recs, src, columns, folder, files, res)
        fmaps = self.extractor(torch.from_numpy(stack.reshape(-1, 3, res, res)),
                               [prompts.prompt(c) for _ in recs for c in columns])
        fmaps = fmaps.view(len(recs), len(columns), *fmaps.shape[1:])
        out = {}
        for n, r in enumerate(recs):
            each, score = cotypicality_scores(np.stack([maps[r.image_id][c] for c in targets[r.image_id]]), k)
            p = select_patches(score[None], k, cfg.per_image, "top")
            typ = np.array([[float(each[m, int(b[1]), int(b[0])]) for m in range(len(targets[r.image_id]))]
                            for b in p.box], np.float32)
            local = np.full(len(p), n, dtype=np.int64)
            parts = [pool_boxes(fmaps[:, j], local, p.box, res).numpy() for j in range(len(columns))]
            out[r.image_id] = {"box": np.asarray(p.box, np.int64), "score": np.asarray(p.score, np.float32),
                               "typicality": typ, "features": l2_normalize(np.concatenate(parts, axis=1))}
        return out

    def write(self, done, out: Path) -> Path:
        cfg, folder, files, res, k, columns = self.config, self.folder, self.files, self.res, self.k, self.columns
        records, index, targets, dataset = self.records, self.index, self.targets, self.dataset

        # -- 4. the most co-typical patches overall, clustered (mining's cluster stage) -----------------
        per_image, typ_rows, feat_rows = [], [], []
        for r in records:
            d = done[r.image_id]
            per_image.append(Patches(np.full(len(d["score"]), index[r.image_id], np.int64), d["box"], d["score"]))
            typ_rows += [dict(zip(targets[r.image_id], (float(v) for v in row))) for row in d["typicality"]]
            feat_rows.append(d["features"])
        patches = Patches.concat(per_image)
        if len(patches) == 0:
            raise DataError(f"{folder}: no patch could be selected")
        keep = top_per_label_index(patches, cfg.top)
        features = np.concatenate(feat_rows)  # one row per patch of `patches`
        # mining's stage 3 on the kept patches; k-means iterations and metric as mining's defaults
        found = cluster_patches("changes", features[keep], keep, patches.image[keep], patches.score[keep],
                                ClusterSettings.of(cfg))
        clusters = [{"id": cl.id, "members": cl.members, "distances": cl.distances, "median": cl.median,
                     "n_images": cl.n_images} for cl in found.clusters]
        pixels: dict[int, np.ndarray] = {}

        def pixels_of(n: int) -> np.ndarray:
            """Image `n` under every label, (labels, res, res, 3) uint8 (the shown ones only)."""
            if n not in pixels:
                got, src = dataset.load_arrays(res, [records[n]])
                if not got:
                    raise DataError(f"{dataset.root}: an image became unreadable")
                stack = _label_stack([records[n]], src, columns, folder, files, res)[0]
                pixels[n] = np.stack([from_tensor_array(x) for x in stack])
            return pixels[n]

        # -- 5. outputs ---------------------------------------------------------------------------
        table, doc_clusters = [], []
        for rank, cl in enumerate(clusters):
            shown = []
            for j, (mi, d) in enumerate(zip(cl["members"], cl["distances"])):
                r = records[int(patches.image[mi])]
                box = [int(v) for v in patches.box[mi]]
                entry = {"cluster_rank": rank, "cluster_id": cl["id"], "median_cotypicality": cl["median"],
                         "cluster_size": len(cl["members"]), "cluster_images": cl["n_images"], "member_rank": j,
                         "image_id": r.image_id, "source_label": r.labels[0], "x0": box[0], "y0": box[1],
                         "x1": box[2], "y1": box[3], "cotypicality": float(patches.score[mi]), "distance": float(d),
                         **{f"typicality_{c}": typ_rows[mi].get(c, "") for c in columns}}
                table.append(entry)
                if j < cfg.show:
                    cells = []
                    for jc, c in enumerate(columns):
                        f = f"patches/c{rank:03d}/m{j:03d}_{safe_name(c)}.png"
                        save_png(out / f, np.ascontiguousarray(crop(pixels_of(int(patches.image[mi]))[jc], box)))
                        cells.append({"file": f, "label": c, "source": c == r.labels[0],
                                      "typicality": typ_rows[mi].get(c)})
                    shown.append({"image_id": r.image_id, "source_label": r.labels[0], "box": box,
                                  "cotypicality": float(patches.score[mi]), "cells": cells})
            doc_clusters.append({"rank": rank, "median": cl["median"], "n_members": len(cl["members"]),
                                 "n_images": cl["n_images"], "rows": shown})
        buf = io.StringIO()
        fields = ["cluster_rank", "cluster_id", "median_cotypicality", "cluster_size", "cluster_images",
                  "member_rank",
                  "image_id", "source_label", "x0", "y0", "x1", "y1", "cotypicality", "distance"] + \
            [f"typicality_{c}" for c in columns]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        write_text(out / "clusters.csv", buf.getvalue())
        summary = {"translations": str(folder), "method": self.tcfg.get("method"), "images": len(records),
                   "labels": ", ".join(columns), "patch": f"{k} px", "patches kept": len(keep),
                   "clusters (k)": found.k, "clusters kept": len(clusters), "typicality draws": cfg.draws,
                   "t range": f"{cfg.t_range[0]}-{cfg.t_range[1]}"}
        write_report(out / "report.html", columns, doc_clusters, summary)
        return Path(cfg.out)


def run_changes(config: ChangesConfig, progress: bool = True) -> Path | None:
    """Mine consistent changes from a translations folder; returns the output folder (report.html inside).

    Under `accelerate launch` only the main process writes the outputs (the others return None);
    with a simulated split (process_index) a call computes its share of the groups and returns
    None, and a later one-process run computes what is left and writes the outputs."""
    return run_job(ChangesJob(config, progress))
