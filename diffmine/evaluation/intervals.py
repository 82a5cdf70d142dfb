"""95 % intervals for reported figures, resampling the independent unit (an image, a source image, a box).

Benchmarks and metrics report a figure as `{"value", "ci", "n"}`. Two kinds of interval:

* `unit_interval`: a percentile bootstrap (scipy.stats.bootstrap) over the distinct units. Rows that
  share a unit (three translations of one source image, the labels of one image) are resampled
  together, so correlated rows do not narrow the interval. Any statistic of the rows works
  (a mean, an AUROC recomputed on the resample, a difference of two methods on the same rows:
  that is the paired bootstrap of a margin).
* `proportion_interval`: Clopper-Pearson's exact interval for k successes in n independent trials;
  a bootstrap of 8/8 would claim [1, 1].

A target or a margin counts as met only when its interval clears it (`clears`).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0  # fixed: rerunning a benchmark on the same items gives the same interval


def _rows_by_unit(units: Sequence) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(units, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(inverse.max() + 2))
    return [order[bounds[u]:bounds[u + 1]] for u in range(len(bounds) - 1)]


def unit_interval(units: Sequence, statistic: Callable[[np.ndarray], float], confidence: float = CONFIDENCE,
                  n_resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of `statistic(rows)`, resampling the distinct values of `units`.

    `units[i]` is the unit of row i; `statistic` receives an array of row indices (with repeats)."""
    groups = _rows_by_unit(units)
    if len(groups) < 2:
        v = float(statistic(np.arange(len(units))))
        return v, v

    def on_sample(sample: np.ndarray) -> float:
        return float(statistic(np.concatenate([groups[int(u)] for u in sample])))

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # all resamples equal: the interval is a point
        res = stats.bootstrap((np.arange(len(groups)),), on_sample, vectorized=False, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile",
                              random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def mean_estimate(values: Sequence[float], units: Sequence | None = None, **kw) -> dict:
    """Mean of per-row values (NaN rows dropped) with its unit-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    u = np.asarray(units if units is not None else np.arange(len(v)), dtype=object)
    keep = ~np.isnan(v)
    v, u = v[keep], u[keep]
    if not len(v):
        return {"value": None, "ci": [None, None], "n": 0}
    lo, hi = unit_interval(u, lambda rows: v[rows].mean(), **kw)
    return {"value": float(v.mean()), "ci": [lo, hi], "n": int(len(set(map(str, u))))}


def statistic_estimate(units: Sequence, statistic: Callable[[np.ndarray], float], **kw) -> dict:
    """`statistic` on all rows, with its unit-bootstrap interval (e.g. an AUROC or a paired margin)."""
    lo, hi = unit_interval(units, statistic, **kw)
    return {"value": float(statistic(np.arange(len(units)))), "ci": [lo, hi],
            "n": int(len(set(map(str, units))))}


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson exact interval for k successes out of n."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def proportion_estimate(k: int, n: int, **kw) -> dict:
    lo, hi = proportion_interval(k, n, **kw)
    return {"value": k / n if n else None, "ci": [lo, hi], "n": int(n)}


def clears(estimate: dict, threshold: float, above: bool = True) -> bool:
    """Does the whole interval lie beyond `threshold` (strictly)? Use 0 for a margin."""
    lo, hi = estimate["ci"]
    if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
        return False
    return lo > threshold if above else hi < threshold
