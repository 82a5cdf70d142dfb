"""A pairwise baseline for "where is the label's element": raw pixel patches against the other labels.

For a test image of label c, each pixel patch is scored by its distance to the nearest patch of the
training images of every other label (FAISS, exact L2): a patch unlike anything the other labels show
is what the pairwise approach calls characteristic of c. The map is the patch scores spread over the
pixels each patch covers (the maximum of the patches covering a pixel). No model, no training: the
simplest thing that could find a planted element, and the comparison the diffusion maps must beat.
"""
from __future__ import annotations

import numpy as np

PATCH = 8          # px side of a patch at 64 px: about the stroke scale of the planted elements
QUERY_STRIDE = 2   # px between test patches
BANK_STRIDE = 4    # px between training patches
BANK_SHARE = 0.5   # of the other labels' training patches kept (random, seeded): bounds the search


def patches(images: np.ndarray, stride: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(N, H, W, C) float images -> (N, P, PATCH*PATCH*C) patches and their top-left corners."""
    n, h, w, c = images.shape
    corners = [(y, x) for y in range(0, h - PATCH + 1, stride) for x in range(0, w - PATCH + 1, stride)]
    out = np.stack([images[:, y:y + PATCH, x:x + PATCH].reshape(n, -1) for y, x in corners], axis=1)
    return out.astype(np.float32), corners


def contrast_maps(train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str],
                  seed: int = 0) -> np.ndarray:
    """One (H, W) map per test image: each pixel's patch distance to the nearest other-label patch."""
    import faiss

    rng = np.random.default_rng(seed)
    train_patches, _ = patches(train, BANK_STRIDE)
    query_patches, corners = patches(test, QUERY_STRIDE)
    maps = np.zeros(test.shape[:3], np.float32)
    for label in sorted(set(test_labels)):
        others = train_patches[[lab != label for lab in train_labels]].reshape(-1, train_patches.shape[-1])
        bank = others[rng.random(len(others)) < BANK_SHARE]
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(np.ascontiguousarray(bank))
        rows = [i for i, lab in enumerate(test_labels) if lab == label]
        q = query_patches[rows].reshape(-1, query_patches.shape[-1])
        dist, _ = index.search(np.ascontiguousarray(q), 1)
        dist = dist.reshape(len(rows), len(corners))
        for k, (y, x) in enumerate(corners):
            maps[rows, y:y + PATCH, x:x + PATCH] = np.maximum(maps[rows, y:y + PATCH, x:x + PATCH],
                                                              dist[:, k, None, None])
    return maps


def label_contrast_maps(data, resolution: int = 64) -> dict[str, np.ndarray]:
    """The baseline's map of every image of `data`/test, its bank drawn from `data`/train (one label each)."""
    from pathlib import Path

    from diffmine.core.dataset import LabeledImages

    def arrays(split):
        recs, x = LabeledImages(Path(data) / split).load_arrays(resolution)
        return recs, ((x.transpose(0, 2, 3, 1) + 1) / 2).astype(np.float32)  # [-1, 1] NCHW -> [0, 1] NHWC

    (train_recs, train), (test_recs, test) = arrays("train"), arrays("test")
    maps = contrast_maps(train, [r.labels[0] for r in train_recs], test, [r.labels[0] for r in test_recs])
    return {r.image_id: m for r, m in zip(test_recs, maps)}


def contrast_summary(rows: list[dict], digits: int) -> dict:
    """The baseline's pointing game and pixel AUROC over `rows` (each with "pointing", "pixel_auroc" and the
    baseline's "contrast_pointing", "contrast_pixel_auroc" for one item), and ours minus it, paired by item;
    each with its percentile-bootstrap interval."""
    from benchmarks.records import mean_interval

    out = {}
    for figure, name in (("pointing", "pointing_game"), ("pixel_auroc", "pixel_auroc")):
        base = np.array([r[f"contrast_{figure}"] for r in rows], np.float64)
        diff = np.array([r[figure] for r in rows], np.float64) - base
        out[f"contrast_{name}"] = round(float(base.mean()), digits)
        out[f"contrast_{name}_ci"] = mean_interval(base, 3)
        out[f"{name}_minus_contrast"] = round(float(diff.mean()), digits)
        out[f"{name}_minus_contrast_ci"] = mean_interval(diff, 3)  # paired: the same items
    return out
