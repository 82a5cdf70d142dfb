"""Anomaly-detection metrics at the pixel level, as industrial inspection reports them (anomalib).

* pixel AUROC: one ROC over every pixel of every image (normal images included), positives the
  defect mask; sklearn's roc_auc_score.
* PRO (per-region overlap; Bergmann et al., MVTec AD): each connected defect region (8-connected,
  scikit-image `label`) counts equally, whatever its size. At a threshold, PRO is the mean over
  regions of the share of the region's pixels above it; the false-positive rate is the share of
  defect-free pixels above it. The reported figure is the area under PRO(FPR) from FPR 0 to
  `fpr_limit` (0.3), divided by `fpr_limit` (1 is perfect), as anomalib's AUPRO. Computed exactly:
  every distinct score is a threshold (one sort), the curve cut at the limit by linear interpolation.
"""
from __future__ import annotations

import numpy as np

PRO_FPR_LIMIT = 0.3  # anomalib's and MVTec AD's integration limit


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of all pixels' scores (n, H, W) against the masks (n, H, W); nan without both classes."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(masks, bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(maps, np.float64).ravel()))


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct score as a threshold (score >= threshold), from (0, 0) to (1, 1)."""
    from skimage.measure import label, regionprops

    maps = np.asarray(maps, np.float64).reshape(-1, *np.shape(maps)[-2:])
    masks = np.asarray(masks, bool).reshape(maps.shape)
    weights = np.zeros(maps.shape)  # a defect pixel's share of its region, over the number of regions
    n_regions = 0
    for i, m in enumerate(masks):
        regions = label(m, connectivity=2)
        for r in regionprops(regions):
            weights[i][regions == r.label] = 1.0 / r.area
            n_regions += 1
    normal = ~masks
    if n_regions == 0 or not normal.any():
        raise ValueError("PRO needs at least one defect region and one defect-free pixel")
    order = np.argsort(-maps.ravel(), kind="stable")
    s = maps.ravel()[order]
    fpr = np.cumsum(normal.ravel()[order]) / normal.sum()
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    last = np.r_[s[1:] != s[:-1], True]  # the end of each run of equal scores: one threshold each
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def pro_score(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Area under PRO(FPR) up to `fpr_limit`, over `fpr_limit` (anomalib's AUPRO)."""
    fpr, pro = pro_curve(maps, masks)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:  # the curve's value at the limit, between the last point in and the first out
        j = int(np.argmax(fpr > fpr_limit))
        y_lim = np.interp(fpr_limit, [fpr[j - 1], fpr[j]], [pro[j - 1], pro[j]])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / fpr_limit)
