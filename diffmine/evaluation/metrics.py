"""Evaluation of typicality maps and mined clusters against ground-truth element masks.

Pure functions on arrays (maps, masks, boxes, kinds), plus a small accumulator that streams
maps label by label so no stage has to hold every map at once. Definitions:

* pointing game: an (image, label) pair is a hit when the maximum of its typicality map lies
  inside an element characteristic of that label (pairs without such an element are skipped).
* pixel AUROC: per (image, label) pair, the AUROC of the pixel typicality for separating the
  pixels of the label's characteristic elements from all others; reported as the mean over
  pairs (overall and per label).
* a patch hits an element when their overlap covers at least `min_overlap` (0.5) of the
  smaller of the two; its kind is that of the element it overlaps most (None: background).
* cluster purity: the share of members whose kind is the cluster's majority kind.
* elements recovered: the fraction of (label, characteristic kind) pairs that are the
  majority kind of one of the label's top-3 clusters with purity >= 0.8.
* characteristic hit rate: the share of patches whose kind is characteristic of their label,
  for the mined patches ("top": the per-label selection) and the baselines ("random",
  "least_typical": every per-image baseline patch).
* shared over characteristic: mean typicality inside shared elements / mean typicality inside
  characteristic elements (pixels pooled over all pairs); well below 1 when typicality singles
  out what is specific to a label.
* characteristic vs shared AUROC: per pair, the AUROC of the map on the pixels of the label's
  characteristic elements against the pixels of the elements every label shares (background
  left out), averaged over pairs. An element detector that ignores labels scores 0.5 here, while
  it can score high on pixel AUROC.

Each pair is kept as a row (`pairs`), and the map figures carry a 95 % interval (`<figure>_ci`)
from a bootstrap over images (intervals.py): the pairs of one image are resampled together.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from diffmine.core.files import json_ready
from diffmine.evaluation.intervals import mean_estimate, proportion_estimate, statistic_estimate

TOP_CLUSTERS = 3  # clusters looked at for "recovered"
MIN_PURITY = 0.8
MIN_OVERLAP = 0.5


def pointing_hit(typ_map: np.ndarray, mask: np.ndarray) -> bool | None:
    """Is the map's maximum inside the mask? None when the mask is empty."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    m = np.asarray(typ_map, dtype=np.float64)
    return bool(mask.reshape(-1)[int(np.argmax(m.reshape(-1)))])


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> float:
    """Fraction of hits over (N, H, W) maps and masks; NaN when no mask is non-empty."""
    hits = [h for h in (pointing_hit(m, k) for m, k in zip(maps, masks)) if h is not None]
    return float(np.mean(hits)) if hits else float("nan")


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(positives, dtype=bool).reshape(-1)
    n_pos = int(p.sum())
    n_neg = p.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average ranks (1-based) over runs of ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Mean per-image pixel AUROC of (N, H, W) maps vs masks; images lacking a class are skipped."""
    vals = [auroc(m, k) for m, k in zip(maps, masks)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def characteristic_vs_shared_auroc(typ_map: np.ndarray, characteristic_mask: np.ndarray,
                                   shared_mask: np.ndarray | None) -> float:
    """AUROC of the map on characteristic-element pixels vs shared-element pixels; NaN without both."""
    if shared_mask is None:
        return float("nan")
    char = np.asarray(characteristic_mask, dtype=bool).reshape(-1)
    shared = np.asarray(shared_mask, dtype=bool).reshape(-1) & ~char
    keep = char | shared
    return auroc(np.asarray(typ_map).reshape(-1)[keep], char[keep])


def masked_sum(typ_map: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum of the map inside the mask, number of pixels)."""
    mask = np.asarray(mask, dtype=bool)
    return float(np.asarray(typ_map, dtype=np.float64)[mask].sum()), int(mask.sum())


def box_mask_overlap(boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(P, 4) pixel boxes x (E, H, W) masks -> (P, E) number of mask pixels inside each box."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    masks = np.asarray(masks, dtype=bool)
    e, h, w = masks.shape
    s = np.zeros((e, h + 1, w + 1), dtype=np.int64)
    s[:, 1:, 1:] = masks.cumsum(1).cumsum(2)
    x0, y0 = np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h)
    x1, y1 = np.clip(boxes[:, 2], 0, w), np.clip(boxes[:, 3], 0, h)
    return (s[:, y1, x1] - s[:, y0, x1] - s[:, y1, x0] + s[:, y0, x0]).T


def patch_kinds(boxes: np.ndarray, masks: np.ndarray, kinds: Sequence[str],
                min_overlap: float = MIN_OVERLAP) -> list[str | None]:
    """The element kind each patch hits (see module doc), None for background."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if len(kinds) == 0 or len(boxes) == 0:
        return [None] * len(boxes)
    inter = box_mask_overlap(boxes, masks).astype(np.float64)
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64)
    el_area = np.asarray(masks, dtype=bool).reshape(len(kinds), -1).sum(1).astype(np.float64)
    smaller = np.maximum(np.minimum(box_area[:, None], el_area[None, :]), 1.0)
    frac = inter / smaller
    best = np.argmax(frac + 1e-9 * inter, axis=1)  # ties: the larger intersection
    hit = frac[np.arange(len(boxes)), best] >= min_overlap
    return [kinds[b] if ok else None for b, ok in zip(best, hit)]


def cluster_purity(member_kinds: Sequence[str | None]) -> tuple[str | None, float]:
    """(majority kind, share of members of that kind); ties go to a real kind, then alphabetically."""
    if len(member_kinds) == 0:
        return None, float("nan")
    counts = Counter(member_kinds)
    kind, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
    return kind, n / len(member_kinds)


def recovered_kinds(characteristic: set[str], clusters: Sequence[tuple[str | None, float]],
                    top: int = TOP_CLUSTERS, min_purity: float = MIN_PURITY) -> list[str]:
    """Characteristic kinds that are the majority kind of one of the top ranked clusters with purity >= min."""
    found = {k for k, p in clusters[:top] if k is not None and p >= min_purity}
    return sorted(found & set(characteristic))


def elements_recovered(characteristic: dict[str, set[str]], clusters: dict[str, Sequence[tuple[str | None, float]]],
                       top: int = TOP_CLUSTERS, min_purity: float = MIN_PURITY) -> tuple[float, dict[str, list[str]]]:
    """Fraction of (label, characteristic kind) pairs recovered, and the recovered kinds per label."""
    per_label = {lab: recovered_kinds(kinds, clusters.get(lab, []), top, min_purity)
                 for lab, kinds in characteristic.items()}
    total = sum(len(k) for k in characteristic.values())
    found = sum(len(v) for v in per_label.values())
    return (found / total if total else float("nan")), per_label


def hit_rate(kinds: Sequence[str | None], characteristic: set[str]) -> float:
    """Share of patches whose kind is one of `characteristic`; NaN without patches."""
    if len(kinds) == 0:
        return float("nan")
    return sum(k in characteristic for k in kinds) / len(kinds)


def _pooled_ratio(pairs: Sequence[dict]) -> float:
    """Mean typicality inside shared elements / inside characteristic ones, pixels pooled over pairs."""
    tot = {k: sum(p.get(k, 0) for p in pairs) for k in ("shared_sum", "shared_pixels",
                                                           "characteristic_sum", "characteristic_pixels")}
    if not tot["shared_pixels"] or not tot["characteristic_pixels"] or not tot["characteristic_sum"]:
        return float("nan")
    return (tot["shared_sum"] / tot["shared_pixels"]) / (tot["characteristic_sum"] / tot["characteristic_pixels"])


class MetricsAccumulator:
    """Streams (map, ground truth) pairs and clusters, then reports everything as one dict.

        acc = MetricsAccumulator()
        acc.add_map(label, typ_map, characteristic_mask, shared_mask, characteristic_kinds)
        acc.add_clusters(label, [(majority_kind, purity, n_members), ...])  # ranked, best first
        acc.result()
    """

    def __init__(self, top: int = TOP_CLUSTERS, min_purity: float = MIN_PURITY):
        self.top, self.min_purity = top, min_purity
        self.hits: dict[str, list[bool]] = {}
        self.aurocs: dict[str, list[float]] = {}
        self.characteristic: dict[str, set[str]] = {}
        self.sums = {"shared": [0.0, 0], "characteristic": [0.0, 0]}
        self.clusters: dict[str, list[dict]] = {}
        self.patch_kinds: dict[str, dict[str, list]] = {}
        self.pairs: list[dict] = []

    def add_map(self, label: str, typ_map: np.ndarray, characteristic_mask: np.ndarray,
                shared_mask: np.ndarray | None = None, characteristic_kinds: Sequence[str] = (),
                image: str | int | None = None) -> None:
        """`image`: the pair's image (the bootstrap's unit); by default every pair is its own."""
        self.characteristic.setdefault(label, set()).update(characteristic_kinds)
        hit = pointing_hit(typ_map, characteristic_mask)
        if hit is not None:
            self.hits.setdefault(label, []).append(hit)
        a = auroc(typ_map, characteristic_mask)
        if not np.isnan(a):
            self.aurocs.setdefault(label, []).append(a)
        self.pairs.append({"image": len(self.pairs) if image is None else image, "label": label,
                           "pointing_hit": hit, "pixel_auroc": a,
                           "characteristic_vs_shared_auroc":
                               characteristic_vs_shared_auroc(typ_map, characteristic_mask, shared_mask)})
        for name, mask in (("characteristic", characteristic_mask), ("shared", shared_mask)):
            if mask is not None:
                s, n = masked_sum(typ_map, mask)
                self.sums[name][0] += s
                self.sums[name][1] += n
                self.pairs[-1][f"{name}_sum"], self.pairs[-1][f"{name}_pixels"] = s, n

    def add_clusters(self, label: str, clusters: Sequence[tuple[str | None, float, int]]) -> None:
        self.clusters[label] = [{"rank": r, "majority_kind": k, "purity": p, "members": n}
                                for r, (k, p, n) in enumerate(clusters)]

    def add_patch_kinds(self, label: str, kinds: dict[str, Sequence[str | None]]) -> None:
        """Element kinds of the patches of one label, per selection ("top", "random", "least_typical")."""
        for name, kk in kinds.items():
            self.patch_kinds.setdefault(name, {}).setdefault(label, []).extend(kk)

    def result(self) -> dict:
        def mean(d: dict[str, list]) -> tuple[float, dict[str, float]]:
            per = {lab: float(np.mean(v)) for lab, v in sorted(d.items()) if v}
            allv = [x for v in d.values() for x in v]
            return (float(np.mean(allv)) if allv else float("nan")), per

        pg, pg_label = mean(self.hits)
        au, au_label = mean(self.aurocs)
        ranked = {lab: [(c["majority_kind"], c["purity"]) for c in cl] for lab, cl in self.clusters.items()}
        char = {lab: kinds for lab, kinds in self.characteristic.items() if kinds}
        rec, rec_label = elements_recovered(char, ranked, self.top, self.min_purity)
        (ss, sn), (cs, cn) = self.sums["shared"], self.sums["characteristic"]
        shared_mean = ss / sn if sn else float("nan")
        char_mean = cs / cn if cn else float("nan")
        ratio = shared_mean / char_mean if sn and cn and char_mean != 0 else float("nan")
        rates = {}
        for name, per in self.patch_kinds.items():
            hits = [k in self.characteristic.get(lab, set()) for lab, kk in per.items() for k in kk]
            rates[name] = float(np.mean(hits)) if hits else float("nan")
        units = [p["image"] for p in self.pairs]
        hits = [np.nan if p["pointing_hit"] is None else float(p["pointing_hit"]) for p in self.pairs]
        n_hit = sum(h == h for h in hits)
        pg_est = (proportion_estimate(int(np.nansum(hits)), n_hit) if len(set(map(str, units))) == len(units)
                  else mean_estimate(hits, units))
        au_est = mean_estimate([p["pixel_auroc"] for p in self.pairs], units)
        cvs_est = mean_estimate([p["characteristic_vs_shared_auroc"] for p in self.pairs], units)
        ratio_est = statistic_estimate(units, lambda rows: _pooled_ratio([self.pairs[i] for i in rows])) \
            if self.pairs else {"ci": [None, None]}
        n_char = sum(len(k) for k in char.values())
        rec_est = proportion_estimate(sum(len(v) for v in rec_label.values()), n_char)
        out = {
            "pointing_game": pg,
            "pointing_game_ci": pg_est["ci"],
            "pointing_game_pairs": sum(len(v) for v in self.hits.values()),
            "pixel_auroc": au,
            "pixel_auroc_ci": au_est["ci"],
            "pixel_auroc_pairs": sum(len(v) for v in self.aurocs.values()),
            "characteristic_vs_shared_auroc": cvs_est["value"],
            "characteristic_vs_shared_auroc_ci": cvs_est["ci"],
            "characteristic_vs_shared_auroc_images": cvs_est["n"],
            "elements_recovered": rec,
            "elements_recovered_ci": rec_est["ci"],
            "shared_over_characteristic": ratio,
            "shared_over_characteristic_ci": ratio_est["ci"],
            "mean_typicality_shared": shared_mean,
            "mean_typicality_characteristic": char_mean,
            "characteristic_hit_rate": rates,
            "recovery_rule": {"top_clusters": self.top, "min_purity": self.min_purity},
            "per_label": {
                lab: {
                    "pointing_game": pg_label.get(lab, float("nan")),
                    "pixel_auroc": au_label.get(lab, float("nan")),
                    "characteristic_kinds": sorted(self.characteristic.get(lab, ())),
                    "recovered_kinds": rec_label.get(lab, []),
                    "characteristic_hit_rate": {
                        name: hit_rate(per.get(lab, []), self.characteristic.get(lab, set()))
                        for name, per in self.patch_kinds.items()},
                }
                for lab in sorted(set(self.characteristic) | set(self.clusters))
            },
            "clusters": self.clusters,
            "pairs": self.pairs,
        }
        return json_ready(out)  # strict JSON: NaN -> None


