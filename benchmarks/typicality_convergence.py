"""How fast typicality maps converge with the number of draws, per draw schedule.

For N = 5, 10, 20, (32), 50, (64), 100: the mean per-image correlation with a precise map
(N = 1000 stratified draws, other seed) of uniform t (the published schedule), stratified t,
and stratified t with antithetic noise pairs (eps, -eps). The bar is the N = 100 uniform reference (the
published draws: same for every image). Last line, one JSON object:
{"n_match_ref_uniform": ..., "n_match_ref_stratified": ...} — the smallest N whose correlation
reaches the reference's (null if none does); the line before it holds every figure. Each correlation's
margin over the reference carries a 95 % interval (paired bootstrap over images); "n_match_ref_*_ci"
is the smallest N whose margin's interval lies above 0 (null if none). Each run is appended to
results/typicality_convergence.json with one row per image.

    python benchmarks/typicality_convergence.py [--model DIR --data DIR] [--images 32]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.records, as a script too
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
    import numpy as np

    from benchmarks.records import save_run
    from diffmine.evaluation.intervals import statistic_estimate

    ref_per = tc.correlations(ref_maps, truth)
    ref = float(ref_per.mean())
    print(f"reference (N=100 uniform, published draws): correlation {ref:.4f}")
    corr, per, margin = {}, {}, {}
    units = np.arange(len(ids))
    for name, kw in CONFIGS.items():
        for n in NS:
            maps, _ = tc.engine_maps(bundle, prompts, ids, images, labels, draws=n, **kw)
            per[name, n] = tc.correlations(maps, truth)
            corr[name, n] = float(per[name, n].mean())
            margin[name, n] = statistic_estimate(units, lambda i, c=per[name, n]: c[i].mean() - ref_per[i].mean())
        print(f"{name:>22}: " + "  ".join(f"N={n}: {corr[name, n]:.4f}" for n in NS))
    match = {name: next((n for n in NS if corr[name, n] >= ref), None) for name in CONFIGS}
    match_ci = {name: next((n for n in NS if margin[name, n]["ci"][0] > 0), None) for name in CONFIGS}
    print("smallest N whose margin over the reference has its 95 % interval above 0: " + json.dumps(match_ci))
    wall = time.perf_counter() - start
    print(f"total {wall:.0f} s")
    items = [{"image_id": str(i), "reference": float(ref_per[j]), **{f"{nm}@{n}": float(c[j]) for (nm, n), c in per.items()}}
             for j, i in enumerate(ids)]
    save_run("typicality_convergence", {
        "setup": what, "reference_corr": ref, "n_match_ref": match, "n_match_ref_ci": match_ci, "wall_s": round(wall, 1),
        "corr": {f"{nm}@{n}": {"value": c, "margin_over_reference": margin[nm, n]} for (nm, n), c in corr.items()}},
        items, protocol={"images": args.images, "precise_draws": args.precise_draws})
    print("details: " + json.dumps({"reference_corr": round(ref, 4), "n_match_ref": match,
                                     "corr": {f"{name}@{n}": round(c, 4) for (name, n), c in corr.items()}}))
    print(json.dumps({"n_match_ref_uniform": match["uniform"], "n_match_ref_stratified": match["stratified"],
                      "n_match_ref_uniform_ci": match_ci["uniform"], "n_match_ref_stratified_ci": match_ci["stratified"],
                      "n_match_ref_antithetic_ci": match_ci["stratified+antithetic"]}))


if __name__ == "__main__":
    main()
