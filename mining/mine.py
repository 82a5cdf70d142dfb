"""The mining stage: typicality maps -> typical patches -> features -> ranked clusters -> report.

    run_mining(MineConfig(model=MODEL_DIR, data=DATA_DIR, typicality=TYP_DIR, out=MINE_DIR))

runs the three stages of `mining.stages` (patches, features, clusters: each returns a typed result
the next one takes, and tests can call them alone), then the evaluation against ground truth
(`mining.evaluate`, only when the data carries it: metrics.json), then `write_outputs`:
clusters.csv / clusters.json, patch crops, heatmap overlays, a PNG grid per label, report.html.
It runs on the job engine (`diffmine.core.job`): the features pass is split over the processes of
`accelerate launch` and resumed after a kill, and the outputs (with config.json) are written to a
temporary folder and swapped in at the end, so `out` always holds one whole run.
"""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffmine.evaluation.groundtruth import has_ground_truth
from diffmine.report.pictures import safe_name, save_grid, save_heatmap_pair, save_patch
from diffmine.core.files import write_json, write_text
from diffmine.core.job import Job, run_job
from diffmine.core.settings import load_config, to_dict
from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError

from mining.config import MineConfig
from mining.features import ClipPatchFeatures, DiftExtractor
from mining.report import render_html
from mining.stages import (FeatureWork, LabelClusters, PatchFeatures, PatchSelection, assemble_features,
                           cluster_stage, select_patches_stage)

CSV_COLUMNS = ["label", "cluster_rank", "cluster_id", "median_typicality", "cluster_size", "cluster_images",
               "member_rank", "image_id", "x0", "y0", "x1", "y1", "typicality", "distance", "element_kind",
               "patch_file", "heatmap_file"]
# What a mining run owns inside its output folder (a rerun replaces exactly these); its kept features
# (.partial) go once the outputs are written.
OUTPUTS = ("report.html", "clusters.csv", "clusters.json", "metrics.json", "config.json", "grids", "patches",
           "images", ".partial")


# -- inputs -------------------------------------------------------------------------------------
def _open_store(typicality):
    if hasattr(typicality, "map") and hasattr(typicality, "pairs"):
        return typicality
    from typicality.store import TypicalityStore

    if not Path(typicality).exists():
        raise DataError(f"{typicality}: typicality folder does not exist")
    return TypicalityStore.open(typicality)


def check_store_matches(store, dataset: LabeledImages, model, force: bool = False) -> None:
    """Refuse maps computed with another model or on other images (same ids), unless `force`."""
    from diffmine.core.models import resolve_model
    from typicality.fingerprints import data_fingerprint, is_legacy, legacy_data_fingerprint, model_fingerprint

    named = model is not None and not hasattr(model, "unet")
    path = resolve_model(model) if named else None  # no such model: said as such, not as "another model"
    problems = []
    want = store.meta.get("data_fingerprint")
    if is_legacy(want):  # a store of an earlier diffmine: ids, labels and sizes are all it can check
        if want != legacy_data_fingerprint(dataset.records):
            problems.append(f"its images differ from those in {dataset.root} (ids, labels or file sizes changed)")
        else:
            warnings.warn(f"{store.root}: written by an earlier diffmine that fingerprinted file sizes, not "
                          "content: pixels changed since cannot be detected; re-run `diffmine typicality` into a "
                          "new --out to be sure", stacklevel=3)
    elif want and want != data_fingerprint(dataset.records, dataset.root):
        problems.append(f"its images differ from those in {dataset.root} (ids, labels or file content changed)")
    want = store.meta.get("model_fingerprint")
    if want and named:
        if want != model_fingerprint(path):
            problems.append(f"it was computed with another model than {model}")
    if problems and not force:
        raise DataError(f"{store.root}: {'; '.join(problems)}; pass --force to mine it anyway")
    for p in problems:
        warnings.warn(f"{store.root}: {p} (--force)", stacklevel=3)


def _make_extractor(cfg: MineConfig, model, res: int, runtime):
    """(DIFT extractor, prompt template) or (CLIP patch encoder, None), on the runtime's device."""
    from diffmine.core.bundle import SDBundle
    from diffmine.core.prompts import PromptTemplate

    if cfg.feature == "clip":
        return ClipPatchFeatures(cfg.clip_model), None
    if isinstance(model, SDBundle):  # handed in (tests, notebooks): placed where the runtime says
        bundle, prompts = runtime.place(model.eval()), PromptTemplate()
    else:
        loaded = runtime.load(model)
        bundle, prompts = loaded.bundle, loaded.prompts
    if bundle.resolution != res:
        warnings.warn(f"the model was built for {bundle.resolution} px, the maps are {res} px", stacklevel=3)
    return DiftExtractor(bundle, t=cfg.dift_t, block=cfg.dift_block, draws=cfg.dift_draws, seed=cfg.seed,
                         batch_size=cfg.batch_size), prompts


def _features_key(cfg: MineConfig, store, sel: PatchSelection, dataset: LabeledImages, runtime) -> dict:
    """What the patch features depend on: the model and store, the feature settings and the patches."""
    import hashlib

    h = hashlib.sha256()
    for lab in sel.labels:
        rows = sel.label_rows[lab]
        h.update(np.asarray(sel.top.box[rows], dtype=np.int64).tobytes())
        h.update("\0".join(dataset.records[int(i)].image_id for i in sel.record_of(sel.top, rows)).encode())
    keys = ("feature", "clip_model", "dift_t", "dift_block", "dift_draws", "seed", "batch_size")
    return {"store": {k: store.meta.get(k) for k in ("model_fingerprint", "data_fingerprint")},
            "model": str(cfg.model), "dtype": str(runtime.dtype), **{k: getattr(cfg, k) for k in keys},
            "patches": h.hexdigest()[:16]}


# -- the whole stage -------------------------------------------------------------------------------
class MineJob(Job):
    """`diffmine mine` on the job engine: the patches pass, then the features pass in fixed groups
    (each kept in `out/.partial/features-<key>/`), then clusters, evaluation and outputs."""

    owned = OUTPUTS

    def __init__(self, config: MineConfig, progress: bool = True, store=None, dataset=None, bundle=None):
        super().__init__(config, progress)
        self.typicality, self.dataset, self.bundle = store, dataset, bundle

    def load(self, rt) -> None:
        cfg, model = self.config, self.bundle if self.bundle is not None else self.config.model
        if self.dataset is None:
            self.dataset = LabeledImages(cfg.data, label_column=cfg.label_column, skip_bad=cfg.skip_bad)
        self.typicality = _open_store(self.typicality if self.typicality is not None else cfg.typicality)
        check_store_matches(self.typicality, self.dataset, model, cfg.force)
        extractor = _make_extractor(cfg, model, int(self.typicality.meta["resolution"]),
                                    rt)  # fail fast on a bad model or CLIP setting
        self.sel = select_patches_stage(self.typicality, self.dataset, cfg, self.progress and rt.is_main)
        self.features = FeatureWork(self.sel, self.dataset, cfg, extractor)
        self.ids, self.phase = self.features.ids, f"{cfg.feature} features"

    def key(self, rt) -> dict:
        return _features_key(self.config, self.typicality, self.sel, self.dataset, rt)

    def store_folder(self, digest: str) -> Path:
        return self.out / ".partial" / f"features-{digest}"

    def groups(self) -> list[list[str]]:
        return self.features.groups()

    def compute(self, group):
        return self.features.compute(group)

    def write(self, stored, tmp: Path) -> Path:
        cfg, sel, dataset, store, progress = self.config, self.sel, self.dataset, self.typicality, self.progress
        feats = assemble_features(sel, dataset, cfg, stored, tmp / ".cache", progress)
        stored.clear()  # its arrays are in `feats` now: freed before clustering
        clusters = cluster_stage(sel, feats, cfg, progress)
        evaluation = None
        if has_ground_truth(dataset.records):
            from mining.evaluate import evaluate_mining

            evaluation = evaluate_mining(sel, clusters, store, dataset, cfg.map_batch, progress, cfg.eval_sigma)
        write_outputs(tmp, cfg, sel, feats, clusters, evaluation, store, dataset, progress)
        del feats
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        kept = {lab: len(c.clusters) for lab, c in clusters.items()}
        if progress or not any(kept.values()):
            empty = [lab for lab, n in kept.items() if n == 0]
            if empty:  # fewer clusters than this run's, if there can be fewer
                fewer = (f", or --clusters {max(1, cfg.clusters // 2)} for fewer, larger clusters"
                         if cfg.clusters > 1 else "")
                print(f"mine: no cluster passed the filters for {', '.join(empty)} (--min-members {cfg.min_members}, "
                      f"--min-images {cfg.min_images}); lower them{fewer}")
        return self.out


def run_mining(config: MineConfig | None = None, progress: bool = True, *, store=None, dataset=None,
               bundle=None, **settings) -> Path:
    """Mine typical visual elements; returns the output folder (report.html inside).

    Settings come as a MineConfig or as its field names. `store` / `dataset` / `bundle` hand in
    already-open objects (tests, notebooks) instead of the folders named in the config.
    Under `accelerate launch` every process computes its share of the patch features (kept in
    `out/.partial/`, so a killed run resumes); the main process then clusters and writes."""
    if config is not None and settings:
        raise TypeError("pass either a MineConfig or settings as keywords, not both")
    cfg = config if config is not None else load_config(MineConfig, None, **settings)
    if bundle is not None and not cfg.model:
        cfg.model = "<in-memory bundle>"
    run_job(MineJob(cfg, progress, store, dataset, bundle))
    return Path(cfg.out)  # every process's answer: the main process has written it


# -- 4. outputs -----------------------------------------------------------------------------------
def write_outputs(out: Path, cfg: MineConfig, sel: PatchSelection, feats: PatchFeatures,
                  clusters: dict[str, LabelClusters], evaluation, store, dataset: LabeledImages,
                  progress: bool = True) -> None:
    """Tables, pictures and the report of one run, into `out` (written from scratch)."""
    def rel(path: Path) -> str:
        return path.relative_to(out).as_posix()

    def heat_file(rec: int, lab: str) -> str:
        return f"images/{safe_name(dataset.records[rec].image_id)}__{safe_name(lab)}.png"

    kinds_top = evaluation.kinds_top if evaluation is not None else None
    pixels, slot = feats.pixels, feats.slot
    doc_labels, table = [], []
    heat_boxes: dict[tuple[int, str], list] = {}  # (record, label) -> boxes outlined on its heatmap page
    pending_heat: list[tuple[dict, int, str]] = []  # (patch entry, record, label)
    for lab in sel.labels:
        lc = clusters[lab]
        lab_dir = out / "patches" / safe_name(lab)
        html_clusters, json_clusters, grid_rows = [], [], []
        for rank, cl in enumerate(lc.clusters):
            majority, purity = evaluation.cluster_kinds[lab][rank] if evaluation is not None else (None, None)
            members_json, members_html = [], []
            for j, (row, d) in enumerate(zip(cl.members, cl.distances)):
                rec = int(sel.record_of(sel.top, row))
                box = [int(v) for v in sel.top.box[row]]
                patch = lab_dir / f"c{rank:02d}_{j:04d}.png"
                save_patch(pixels[slot[rec]], box, patch)
                entry = {"image_id": dataset.records[rec].image_id, "box": box,
                         "typicality": float(sel.top.score[row]), "distance": float(d),
                         "element_kind": kinds_top[row] if kinds_top is not None else None,
                         "patch_file": rel(patch), "heatmap_file": None}
                if j < cfg.show:
                    heat_boxes.setdefault((rec, lab), []).append((box, "cluster"))
                    pending_heat.append((entry, rec, lab))
                    members_html.append(entry)
                members_json.append(entry)
                table.append(({"label": lab, "cluster_rank": rank, "cluster_id": cl.id,
                               "median_typicality": cl.median, "cluster_size": len(cl.members),
                               "cluster_images": cl.n_images, "member_rank": j,
                               "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}, entry))
            if rank < cfg.grid_rows:
                grid_rows.append([pixels[slot[int(sel.record_of(sel.top, row))]][
                    sel.top.box[row, 1]:sel.top.box[row, 3], sel.top.box[row, 0]:sel.top.box[row, 2]]
                    for row in cl.members[:cfg.grid_cols]])
            common = {"rank": rank, "cluster_id": cl.id, "median_typicality": cl.median,
                      "n_members": len(cl.members), "n_images": cl.n_images, "majority_kind": majority,
                      "purity": purity}
            html_clusters.append({**common, "members": members_html})
            json_clusters.append({**common, "members": members_json})
        baselines = {}
        for name, (p, rr) in sel.baseline_rows[lab].items():
            entries = []
            for j, row in enumerate(rr):
                rec = int(sel.record_of(p, row))
                box = [int(v) for v in p.box[row]]
                patch = lab_dir / f"{name.replace(' ', '_')}_{j:03d}.png"
                save_patch(pixels[slot[rec]], box, patch)
                entry = {"image_id": dataset.records[rec].image_id, "box": box, "typicality": float(p.score[row]),
                         "patch_file": rel(patch), "heatmap_file": None}
                heat_boxes.setdefault((rec, lab), []).append((box, name))
                pending_heat.append((entry, rec, lab))
                entries.append(entry)
            baselines[name] = entries
        grid = save_grid(grid_rows, out / "grids" / f"{safe_name(lab)}.png") if grid_rows else None
        n_maps = int((sel.pair_label == lab).sum())
        summary = {"maps": n_maps, "candidate patches": lc.candidates, "clusters (k)": lc.k,
                   "clusters kept": len(lc.clusters)}
        doc_labels.append({
            "name": lab,
            "html": {"name": lab, "anchor": safe_name(lab), "summary": summary, "clusters": html_clusters,
                     "baselines": baselines, "grid": rel(grid) if grid else None},
            "json": {"maps": n_maps, "patches": lc.candidates, "k": lc.k, "inertia": lc.inertia,
                     "clusters_dropped": lc.k - len(lc.clusters), "clusters": json_clusters,
                     "baselines": baselines, "grid": rel(grid) if grid else None},
        })

    # heatmap pages: one per (image, label) shown, each map read once more from the store
    for (rec, lab), boxes in tqdm(sorted(heat_boxes.items(), key=lambda kv: (kv[0][0], kv[0][1])),
                                  desc="heatmaps", unit="image", disable=not progress):
        typ = np.asarray(store.map(dataset.records[rec].image_id, lab), dtype=np.float32)
        save_heatmap_pair(pixels[slot[rec]], typ, out / heat_file(rec, lab), boxes)
    for entry, rec, lab in pending_heat:
        entry["heatmap_file"] = heat_file(rec, lab)

    with open(out / "clusters.csv", "w", newline="", encoding="utf-8") as f:  # inside the temporary folder
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for meta, entry in table:  # entries are final only now (heatmap files are written last)
            row = {**entry, **meta}
            w.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in CSV_COLUMNS})
    summary = {"images": len(dataset), "maps": len(sel.pair_image), "labels": len(sel.labels),
               "resolution": sel.resolution, "patch": sel.patch, "per_image": cfg.per_image,
               "per_label": cfg.per_label, "clusters": cfg.clusters,
               "feature": cfg.feature if cfg.feature == "clip" else f"dift (up_blocks[{cfg.dift_block}], "
                                                                    f"t={cfg.dift_t}, {cfg.dift_draws} draws)",
               "seed": cfg.seed}
    metrics = evaluation.metrics if evaluation is not None else None
    if metrics is not None:
        write_json(out / "metrics.json", metrics)
    write_json(out / "clusters.json", {
        "config": {k: v for k, v in to_dict(cfg).items() if k != "out"}, "resolution": sel.resolution, "patch": sel.patch, "data": str(dataset.root),
        "typicality": str(store.root), "labels": {d["name"]: d["json"] for d in doc_labels},
    })
    doc = {"title": "diffmine: typical visual elements", "summary": summary,
           "metrics": None if metrics is None else {
               key: (f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else metrics[key])
               for key in ("pointing_game", "pixel_auroc", "elements_recovered", "shared_over_characteristic")},
           "labels": [d["html"] for d in doc_labels]}
    write_text(out / "report.html", render_html(doc))
