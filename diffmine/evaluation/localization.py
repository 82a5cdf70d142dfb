"""Localisation metrics of a typicality map against a ground-truth box (docs/method.md §5).

Pure functions on arrays: a map (H, W), a box mask (H, W) bool, pixel boxes (x0, y0, x1, y1)
with x1/y1 exclusive. Definitions:

* AUC-PR (the published metric): per box, the average precision of the pixel map for
  separating the pixels inside the box from all others (`sklearn.metrics.average_precision_score`).
  A random map scores about the box's share of the image.
* predicted box (Wang et al., CVPR 2017 style): the map is min-max normalised to [0, 1],
  thresholded at `threshold` (pixels >= threshold), and the predicted box is the tight bounding
  box of the connected region (8-connectivity) of thresholded pixels that holds the map's maximum.
* IoBB: intersection over the *predicted* box — the share of the predicted box's pixels that
  lie in the true box (Wang et al. 2017); accuracy at T is the share of boxes with IoBB > T,
  for T in 0.1 / 0.25 / 0.5.
* pointing game: the map's maximum lies inside the true box.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IOBB_THRESHOLDS = (0.1, 0.25, 0.5)  # docs/method.md §5 (Wang et al. 2017)
DEFAULT_MAP_THRESHOLD = 0.5


def auc_pr(typ_map: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of the pixel map vs the box mask; NaN when the mask is empty or full."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(mask, dtype=bool).reshape(-1)
    if y.all() or not y.any():
        return float("nan")
    return float(average_precision_score(y, np.asarray(typ_map, dtype=np.float64).reshape(-1)))


def predicted_box(typ_map: np.ndarray, threshold: float = DEFAULT_MAP_THRESHOLD) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the box of the map's peak region (see module doc)."""
    from scipy import ndimage

    m = np.asarray(typ_map, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:  # a flat map points nowhere in particular: the whole image
        return 0, 0, m.shape[1], m.shape[0]
    norm = (m - lo) / (hi - lo)
    regions, _ = ndimage.label(norm >= threshold, structure=np.ones((3, 3), dtype=bool))
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    ys, xs = np.nonzero(regions == regions[peak])
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def iobb(box: Sequence[int], mask: np.ndarray) -> float:
    """Intersection of the predicted pixel box with the true mask, over the predicted box's area."""
    x0, y0, x1, y1 = (int(v) for v in box)
    area = max(0, x1 - x0) * max(0, y1 - y0)
    if area == 0:
        return 0.0
    return float(np.asarray(mask, dtype=bool)[y0:y1, x0:x1].sum() / area)


def pointing_hit(typ_map: np.ndarray, mask: np.ndarray) -> bool:
    """Is the map's maximum (first one in row-major order) inside the mask?"""
    m = np.asarray(typ_map, dtype=np.float64)
    return bool(np.asarray(mask, dtype=bool).reshape(-1)[int(np.argmax(m.reshape(-1)))])


def score_map(typ_map: np.ndarray, mask: np.ndarray, threshold: float = DEFAULT_MAP_THRESHOLD) -> dict:
    """Every per-box figure for one map: auc_pr, iobb, the predicted box, pointing hit."""
    box = predicted_box(typ_map, threshold)
    return {"auc_pr": auc_pr(typ_map, mask), "iobb": iobb(box, mask), "pred_box": box,
            "pointing": pointing_hit(typ_map, mask)}


def summarize(rows: Sequence[dict], thresholds: Sequence[float] = IOBB_THRESHOLDS) -> dict:
    """Per-box scores (dicts from score_map) -> auc_pr (mean, NaN-skipping), iobb_T accuracies,
    pointing_game, n_boxes."""
    n = len(rows)
    out: dict = {}
    aps = [r["auc_pr"] for r in rows if not np.isnan(r["auc_pr"])]
    out["auc_pr"] = float(np.mean(aps)) if aps else float("nan")
    for t in thresholds:
        out[f"iobb_{t:g}"] = float(np.mean([r["iobb"] > t for r in rows])) if n else float("nan")
    out["pointing_game"] = float(np.mean([r["pointing"] for r in rows])) if n else float("nan")
    out["n_boxes"] = n
    return out
