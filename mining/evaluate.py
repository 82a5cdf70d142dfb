"""Evaluation of a mining run against ground truth: a step of its own, after the clusters.

Reads each map once more from the store (in the miner's chunk order, so every sum is the
same), and scores the maps (pointing game, pixel AUROC, shared / characteristic), the patches
(which element each top / least-typical / random patch lands on) and the clusters (purity,
elements recovered) with `diffmine.evaluation.metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from diffmine.evaluation.groundtruth import record_elements
from diffmine.evaluation.metrics import MetricsAccumulator, cluster_purity, patch_kinds
from diffmine.report.pictures import gaussian_blur

from mining.stages import LabelClusters, PatchSelection, read_maps


@dataclass
class MiningEvaluation:
    metrics: dict                                           # metrics.json
    kinds_top: np.ndarray                                   # element kind of each top patch (None: background)
    cluster_kinds: dict[str, list[tuple[str | None, float | None]]]  # per label, per ranked cluster


def _kinds(patches, root, res, pair_image, pair_label, dataset, elements) -> np.ndarray:
    kinds = np.array([None] * len(patches), dtype=object)
    order = np.argsort(patches.image, kind="stable")
    bounds = np.searchsorted(patches.image[order], np.arange(len(pair_image) + 1))
    for j in range(len(pair_image)):
        rows = order[bounds[j]:bounds[j + 1]]
        el = elements(int(pair_image[j]))
        if el is None or not len(rows):
            continue
        kinds[rows] = patch_kinds(patches.box[rows], el.masks, el.kinds)
    return kinds


def evaluate_mining(sel: PatchSelection, clusters: dict[str, LabelClusters], store, dataset, map_batch: int = 64,
                    progress: bool = True, map_sigma: float = 0.0) -> MiningEvaluation:
    """`map_sigma`: Gaussian blur of each map before the map metrics, px at 256 px (scaled to the maps)."""
    res = sel.resolution
    sigma = map_sigma * res / 256.0
    cache: dict[int, object] = {}

    def elements(rec: int):
        if rec not in cache:
            cache[rec] = record_elements(dataset.records[rec], res, dataset.root)
        return cache[rec]

    acc = MetricsAccumulator()
    for start in tqdm(range(0, len(sel.pair_image), map_batch), desc="evaluating maps", unit="chunk",
                      disable=not progress):
        idx = range(start, min(start + map_batch, len(sel.pair_image)))
        maps = read_maps(store, dataset, sel.pair_image, sel.pair_label, idx, res)
        for n, j in enumerate(idx):
            el = elements(int(sel.pair_image[j]))
            if el is None:
                continue
            lab = sel.pair_label[j]
            char = el.characteristic(lab)
            shared = el.union(el.shared()) if len(el.shared()) else None
            acc.add_map(lab, gaussian_blur(maps[n], sigma), el.union(char), shared, [el.kinds[c] for c in char],
                        image=dataset.records[int(sel.pair_image[j])].image_id)
    args = (dataset.root, res, sel.pair_image, sel.pair_label, dataset, elements)
    kinds_top, kinds_low, kinds_rand = (_kinds(p, *args) for p in (sel.top, sel.least, sel.random))
    cluster_kinds = {}
    for lab in sel.labels:
        ranked = [cluster_purity(list(kinds_top[cl.members])) for cl in clusters[lab].clusters]
        cluster_kinds[lab] = ranked
        acc.add_clusters(lab, [(k, p, len(cl.members)) for (k, p), cl in zip(ranked, clusters[lab].clusters)])
    for lab in sel.labels:  # do the selected patches land on characteristic elements more than baselines?
        acc.add_patch_kinds(lab, {
            "top": list(kinds_top[sel.label_rows[lab]]),
            "random": list(kinds_rand[sel.pair_label[sel.random.image] == lab]),
            "least_typical": list(kinds_low[sel.pair_label[sel.least.image] == lab])})
    return MiningEvaluation(acc.result(), kinds_top, cluster_kinds)
