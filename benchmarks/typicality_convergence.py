"""How fast typicality maps converge with the number of draws, per draw schedule.

For N = 5, 10, 20, (32), 50, (64), 100: the mean per-image correlation with a precise map
(N = 1000 stratified draws, other seed) of uniform t (the published schedule), stratified t,
and stratified t with antithetic noise pairs (eps, -eps). The bar is the N = 100 uniform reference (the
published draws: same for every image). Last line, one JSON object:
{"n_match_ref_uniform": ..., "n_match_ref_stratified": ...} — the smallest N whose correlation
reaches the reference's (null if none does); the line before it holds every figure.

    python benchmarks/typicality_convergence.py [--model DIR --data DIR] [--images 32]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import typicality_common as tc  # noqa: E402

NS = (5, 10, 20, 32, 50, 64, 100)  # the grid, plus 32 and 64 (the engine's default)
CONFIGS = {  # name -> estimator settings
    "uniform": dict(schedule="uniform", antithetic=False),
    "stratified": dict(schedule="stratified", antithetic=False),
    "stratified+antithetic": dict(schedule="stratified", antithetic=True),  # the engine's default
}


def main() -> None:
    args = tc.parse_args(__doc__.splitlines()[0])
    start = time.perf_counter()
    bundle, prompts, ids, images, labels, what = tc.load_setup(args)
    print(f"setup: {what}")
    truth = tc.precise_maps(bundle, prompts, ids, images, labels, args.precise_draws)
    ref_maps, _ = tc.engine_maps(bundle, prompts, ids, images, labels,
                                 draw_fn=lambda image_id, shape: tc.reference_draws(shape))
    ref = tc.mean_correlation(ref_maps, truth)
    print(f"reference (N=100 uniform, published draws): correlation {ref:.4f}")
    corr = {}
    for name, kw in CONFIGS.items():
        for n in NS:
            maps, _ = tc.engine_maps(bundle, prompts, ids, images, labels, draws=n, **kw)
            corr[name, n] = tc.mean_correlation(maps, truth)
        print(f"{name:>22}: " + "  ".join(f"N={n}: {corr[name, n]:.4f}" for n in NS))
    match = {name: next((n for n in NS if corr[name, n] >= ref), None) for name in CONFIGS}
    print(f"total {time.perf_counter() - start:.0f} s")
    print("details: " + json.dumps({"reference_corr": round(ref, 4), "n_match_ref": match,
                                     "corr": {f"{name}@{n}": round(c, 4) for (name, n), c in corr.items()}}))
    print(json.dumps({"n_match_ref_uniform": match["uniform"], "n_match_ref_stratified": match["stratified"]}))


if __name__ == "__main__":
    main()
