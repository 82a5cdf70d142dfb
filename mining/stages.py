"""Mining's stages, each a function from the previous stage's typed result to its own:

1. `select_patches_stage` (maps pass, in chunks, each (image, own label) map read once):
   patch scores by box filter, the top `per_image` non-overlapping patches per map, the
   least-typical and random baselines; then the `per_label` most typical patches per label.
2. `features_stage`: every image that contributes a shown patch is decoded once; its DIFT feature
   map is computed once (label prompt, seeded draws) and pooled in each of its patch boxes.
3. `cluster_stage`: FAISS k-means per label (`cluster_patches`, with typed `ClusterSettings`, which
   other applications call on their own patches); clusters filtered by member and image counts,
   ranked by median typicality; members nearest-to-centroid first.

`mining.mine.run_mining` chains them; `mining.evaluate` and the applications read their results.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError
from diffmine.core.images import from_tensor_array
from diffmine.core.partial import PartialResults, compute_groups, fixed_groups
from diffmine.core.settings import defaults

from mining.cluster import FaissKMeans
from mining.config import MineConfig
from mining.features import pool_boxes
from mining.patches import Patches, default_patch_size, patch_scores, select_patches, top_per_label_index


# -- typed results ------------------------------------------------------------------------------
@dataclass
class PatchSelection:
    """Stage 1. Patches' `image` field indexes the map pairs (pair_image / pair_label)."""
    resolution: int
    patch: int
    pair_image: np.ndarray          # (P,) record index of each (image, label) map
    pair_label: np.ndarray          # (P,) label of each map (object array)
    labels: list[str]
    top: Patches                    # per-image top patches of every map
    least: Patches                  # per-image least-typical patches (baseline)
    random: Patches                 # per-image random patches (baseline)
    label_rows: dict[str, np.ndarray]  # rows of `top` kept per label (the per_label most typical)
    baseline_rows: dict[str, dict[str, tuple[Patches, np.ndarray]]]

    def record_of(self, patches: Patches, rows) -> np.ndarray:
        return self.pair_image[patches.image[rows]]


@dataclass
class PatchFeatures:
    """Stage 2: one feature row per kept top patch, and the decoded pixels of every shown image."""
    features: np.ndarray            # (R, d) float32
    row_of: dict[int, int]          # row of selection.top -> row of features
    pixels: np.ndarray              # (n, res, res, 3) uint8 (a memory map)
    slot: dict[int, int]            # record index -> row of pixels


@dataclass
class Cluster:
    id: int
    members: np.ndarray             # rows of selection.top, nearest to the centroid first
    distances: np.ndarray           # distance of each member to the centroid
    median: float                   # median typicality of the members (the rank key)
    n_images: int


@dataclass
class ClusterSettings:
    """What stage 3 needs of the settings: `of(cfg)` takes mining's config, or another application's."""
    clusters: int
    kmeans_iter: int
    spherical: bool
    seed: int
    min_members: int
    min_images: int

    @classmethod
    def of(cls, cfg) -> "ClusterSettings":
        """`cfg`'s own values where it has the setting, mining's defaults (MineConfig) for the rest."""
        mine = defaults(MineConfig)
        return cls(**{f.name: getattr(cfg, f.name, mine[f.name]) for f in fields(cls)})


@dataclass
class LabelClusters:
    """Stage 3, for one label: the kept clusters, best first."""
    label: str
    candidates: int
    k: int
    inertia: float
    clusters: list[Cluster]


def map_pairs(store, dataset: LabeledImages) -> tuple[np.ndarray, np.ndarray]:
    """(record index, label) of every map to mine: each image with each of its own labels."""
    stored = {tuple(p) for p in store.pairs()}
    pairs = [(i, lab) for i, r in enumerate(dataset.records) for lab in r.labels]
    found = [p for p in pairs if (dataset.records[p[0]].image_id, p[1]) in stored]
    if not found:
        raise DataError(f"{store.root}: no typicality map for any image of {dataset.root} "
                        "(was the store computed on this data?)")
    if len(found) < len(pairs):
        missing = [f"{dataset.records[i].image_id} ({lab})" for i, lab in pairs
                   if (dataset.records[i].image_id, lab) not in stored]
        warnings.warn(f"{len(missing)} (image, label) pair(s) of the data have no typicality map and are "
                      f"skipped: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", stacklevel=3)
    return (np.array([i for i, _ in found], dtype=np.int64), np.array([lab for _, lab in found], dtype=object))


def read_maps(store, dataset: LabeledImages, pair_image, pair_label, idx, res: int) -> np.ndarray:
    maps = np.stack([np.asarray(store.map(dataset.records[pair_image[j]].image_id, pair_label[j]),
                                dtype=np.float32) for j in idx])
    if maps.shape[1:] != (res, res):
        raise DataError(f"{store.root}: maps are {maps.shape[1]}x{maps.shape[2]}, expected {res}x{res}")
    return maps


# -- 1. patches ----------------------------------------------------------------------------------
def select_patches_stage(store, dataset: LabeledImages, cfg: MineConfig, progress: bool = True) -> PatchSelection:
    res = int(store.meta["resolution"])
    k = int(cfg.patch or default_patch_size(res))
    if k > res:
        raise DataError(f"--patch {k} px is larger than the processing resolution {res} px")
    pair_img, pair_lab = map_pairs(store, dataset)
    tops, lows, rands = [], [], []
    gen = torch.Generator().manual_seed(cfg.seed)
    for start in tqdm(range(0, len(pair_img), cfg.map_batch), desc="patch typicality", unit="chunk",
                      disable=not progress):
        idx = range(start, min(start + cfg.map_batch, len(pair_img)))
        scores = patch_scores(read_maps(store, dataset, pair_img, pair_lab, idx, res), k)
        tops.append(select_patches(scores, k, cfg.per_image, "top", offset=start))
        lows.append(select_patches(scores, k, cfg.per_image, "bottom", offset=start))
        rands.append(select_patches(scores, k, cfg.per_image, "random", generator=gen, offset=start))
    tops, lows, rands = Patches.concat(tops), Patches.concat(lows), Patches.concat(rands)
    labels = sorted(set(pair_lab))
    label_rows, baseline_rows = {}, {}
    rng = np.random.default_rng(cfg.seed)
    for lab in labels:
        rows = np.flatnonzero(pair_lab[tops.image] == lab)
        label_rows[lab] = rows[top_per_label_index(tops.take(rows), cfg.per_label)]
        low_rows = np.flatnonzero(pair_lab[lows.image] == lab)
        low_rows = low_rows[np.argsort(lows.score[low_rows], kind="stable")[:cfg.baselines]]
        rand_rows = np.flatnonzero(pair_lab[rands.image] == lab)
        rand_rows = np.sort(rng.choice(rand_rows, size=min(cfg.baselines, len(rand_rows)), replace=False))
        baseline_rows[lab] = {"random": (rands, rand_rows), "least typical": (lows, low_rows)}
    return PatchSelection(res, k, pair_img, pair_lab, labels, tops, lows, rands, label_rows, baseline_rows)


# -- 2. features ---------------------------------------------------------------------------------
def _feature_rows(sel: PatchSelection, dataset: LabeledImages):
    """(rows of `top` with a feature, record index of each, image id -> record index of those images)."""
    all_rows = np.concatenate([sel.label_rows[lab] for lab in sel.labels])
    row_img = sel.record_of(sel.top, all_rows)
    return all_rows, row_img, {dataset.records[int(i)].image_id: int(i) for i in np.unique(row_img)}


def features_stage(sel: PatchSelection, dataset: LabeledImages, cfg: MineConfig, extractor, cache_dir: Path,
                   runtime, progress: bool = True, partial=None) -> PatchFeatures | None:
    """Features of every kept top patch, and the decoded pixels of every image shown
    (`compute_features`, then `assemble_features` on the main process; None on the others)."""
    _require_runtime(runtime, "features_stage")
    partial = partial or PartialResults(cache_dir / "features", {}, runtime.rank)
    stored = compute_features(sel, dataset, cfg, extractor, partial, runtime, progress)
    return None if stored is None else assemble_features(sel, dataset, cfg, stored, cache_dir, progress)


def _require_runtime(runtime, stage: str) -> None:
    """A stage runs on its caller's runtime (the one that placed the extractor's model), never on a default."""
    from diffmine.core.runtime import Runtime

    if not isinstance(runtime, Runtime):
        raise TypeError(f"mining.stages.{stage} needs the caller's Runtime (Runtime.start(cfg), which placed the "
                        f"feature extractor's model and deals the groups out), got {runtime!r}")


class FeatureWork:
    """The features pass as groups of work: the images with a kept patch, in fixed groups of
    `batch_size` (decoded once, one feature forward per group, pooled in each patch box)."""

    def __init__(self, sel: PatchSelection, dataset: LabeledImages, cfg: MineConfig, extractor):
        self.sel, self.dataset, self.cfg = sel, dataset, cfg
        self.extractor, self.prompts = extractor
        self.all_rows, self.row_img, self.index = _feature_rows(sel, dataset)
        self.ids = list(self.index)

    def groups(self) -> list[list[str]]:
        return fixed_groups(self.ids, self.cfg.batch_size)

    def compute(self, group: list[str]) -> dict[str, dict[str, np.ndarray]]:
        dataset, res, index, row_img = self.dataset, self.sel.resolution, self.index, self.row_img
        recs = [dataset.records[index[i]] for i in group]
        loaded, arr = dataset.load_arrays(res, recs)
        if len(loaded) != len(recs):
            raise DataError(f"{dataset.root}: an image became unreadable between the passes")
        rows = [np.flatnonzero(row_img == index[i]) for i in group]
        img_local = np.concatenate([np.full(len(r), n, np.int64) for n, r in enumerate(rows)])
        boxes = self.sel.top.box[self.all_rows[np.concatenate(rows)]]
        if self.cfg.feature == "dift":
            fmaps = self.extractor(torch.from_numpy(arr), [self.prompts.prompt(r.labels) for r in recs])
            f = pool_boxes(fmaps, img_local, boxes, res).numpy()
        else:
            f = self.extractor(torch.from_numpy(arr), img_local, boxes).numpy()
        pixels = from_tensor_array(arr)
        return {i: {"features": np.ascontiguousarray(f[img_local == n], dtype=np.float32), "pixels": pixels[n]}
                for n, i in enumerate(group)}


def compute_features(sel: PatchSelection, dataset: LabeledImages, cfg: MineConfig, extractor, partial,
                     runtime, progress: bool = True) -> dict | None:
    """`FeatureWork` on its own (the mine command runs it on the job engine): under `runtime` each
    process takes its share of the groups, and each finished group is kept in `partial` (a resumed
    run redoes only the missing ones). Returns every image's features and pixels on the main
    process, None on the others."""
    _require_runtime(runtime, "compute_features")
    work = FeatureWork(sel, dataset, cfg, extractor)
    with tqdm(total=len(work.ids), desc=f"{cfg.feature} features", unit="img",
              disable=not progress or not runtime.is_main) as bar:
        return compute_groups(work.groups(), work.compute, partial, runtime, bar)


def assemble_features(sel: PatchSelection, dataset: LabeledImages, cfg: MineConfig, stored: dict,
                      cache_dir: Path, progress: bool = True) -> PatchFeatures:
    """The feature matrix of the kept patches, and a memory map of the pixels of every image shown
    (the baseline-only images are decoded here)."""
    all_rows, row_img, index = _feature_rows(sel, dataset)
    feat_images = np.array(sorted(index.values()), dtype=np.int64)
    res = sel.resolution
    base_images = [sel.record_of(p, rr) for lab in sel.labels for p, rr in sel.baseline_rows[lab].values()]
    needed = np.union1d(feat_images, np.concatenate(base_images + [np.zeros(0, np.int64)]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.lib.format.open_memmap(cache_dir / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(needed), res, res, 3))
    features = None
    for image_id, rec in index.items():
        got = stored[image_id]
        if features is None:
            features = np.zeros((len(all_rows), got["features"].shape[1]), dtype=np.float32)
        features[np.flatnonzero(row_img == rec)] = got["features"]
    slot = {int(i): n for n, i in enumerate(needed)}
    for image_id, rec in index.items():
        pixels[slot[rec]] = stored[image_id]["pixels"]
    rest = [int(i) for i in needed if int(i) not in set(index.values())]  # shown only as baselines
    for s in tqdm(range(0, len(rest), cfg.batch_size), desc="baseline images", unit="batch",
                  disable=not progress or not rest):
        ids = rest[s:s + cfg.batch_size]
        recs, arr = dataset.load_arrays(res, [dataset.records[i] for i in ids])
        if len(recs) != len(ids):
            raise DataError(f"{dataset.root}: an image became unreadable between the passes")
        for n, i in enumerate(ids):
            pixels[slot[i]] = from_tensor_array(arr[n])
    return PatchFeatures(features, {int(r): n for n, r in enumerate(all_rows)}, pixels, slot)


# -- 3. clusters ---------------------------------------------------------------------------------
def cluster_patches(label: str, X: np.ndarray, rows: np.ndarray, records: np.ndarray, scores: np.ndarray,
                    settings: ClusterSettings) -> LabelClusters:
    """One label's clusters: k-means of the features `X` (one row per patch row `rows`, from image
    `records`, with typicality `scores`), filtered by member and image counts, best first."""
    km = FaissKMeans(n_clusters=settings.clusters, n_iter=settings.kmeans_iter, spherical=settings.spherical,
                     random_state=settings.seed).fit(X)
    dist = np.sqrt(((X - km.cluster_centers_[km.labels_]) ** 2).sum(1))
    clusters = []
    for c in range(km.n_clusters_):
        m = np.flatnonzero(km.labels_ == c)
        n_img = len(np.unique(records[m]))
        if len(m) < settings.min_members or n_img < settings.min_images:
            continue
        m = m[np.lexsort((-scores[m], dist[m]))]  # nearest to the centroid first
        clusters.append(Cluster(c, rows[m], dist[m], float(np.median(scores[m])), n_img))
    clusters.sort(key=lambda cl: (-cl.median, -len(cl.members), cl.id))
    return LabelClusters(label, len(rows), km.n_clusters_, km.inertia_, clusters)


def cluster_stage(sel: PatchSelection, feats: PatchFeatures, cfg: MineConfig,
                  progress: bool = True) -> dict[str, LabelClusters]:
    settings = ClusterSettings.of(cfg)
    result = {}
    for lab in tqdm(sel.labels, desc="clustering", unit="label", disable=not progress):
        rows = sel.label_rows[lab]
        X = feats.features[[feats.row_of[int(r)] for r in rows]]
        result[lab] = cluster_patches(lab, X, rows, sel.record_of(sel.top, rows), sel.top.score[rows], settings)
    return result
