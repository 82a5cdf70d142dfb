"""Scale of the mining stage on synthetic data: the patch stage and the clustering stage.

    python benchmarks/mining_scale.py                 # 10,000 maps at 256 px; 100,000 x 1280 features
    python benchmarks/mining_scale.py --maps 500 --n 10000   # a quick look

Patch stage: box-filter patch typicality (k = 50 px at 256 px), the 5 best non-overlapping
patches per map, then the 1000 best across maps -- what `diffmine mine` does per label, with
maps generated chunk by chunk (generation is not timed) so memory stays bounded.
Clustering stage: FAISS k-means (mining.cluster.FaissKMeans) and scikit-learn KMeans on the same
L2-normalised features (regenerated from the same seed), same k, same initial centroids,
n_init=1, and the same number of Lloyd iterations (scikit-learn stops as soon as no label
changes; FAISS then runs the count scikit-learn actually ran).

Each stage (patches, scikit-learn, FAISS) runs in its own process, so that its peak resident
memory is its own and two OpenMP runtimes never spin against each other in one process (on a
small shared machine, OMP_WAIT_POLICY=PASSIVE makes FAISS's timings much steadier). Prints one
line per stage, and last a JSON line:
{"patch_stage_s": ..., "faiss_s": ..., "sklearn_s": ..., "faiss_over_sklearn": ..., "peak_rss_mb": ...}
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def patch_stage(a) -> dict:
    import torch

    from mining.patches import Patches, default_patch_size, top_patches, top_per_label

    k = a.patch or default_patch_size(a.res)
    g = torch.Generator().manual_seed(0)
    seconds, parts = 0.0, []
    for start in range(0, a.maps, a.chunk):
        n = min(a.chunk, a.maps - start)
        # smooth-ish synthetic maps: coarse noise upsampled, plus fine noise
        coarse = torch.randn((n, 1, a.res // 16, a.res // 16), generator=g)
        maps = torch.nn.functional.interpolate(coarse, size=(a.res, a.res), mode="bilinear", align_corners=False)[:, 0]
        maps += 0.1 * torch.randn((n, a.res, a.res), generator=g)
        t = time.perf_counter()
        parts.append(top_patches(maps, k, a.per_image, offset=start))
        seconds += time.perf_counter() - t
    t = time.perf_counter()
    allp = Patches.concat(parts)
    best = top_per_label(allp, a.per_label)
    seconds += time.perf_counter() - t
    assert len(allp) == a.maps * a.per_image, "every map should fill all its slots at this size"
    return {"stage": "patch", "maps": a.maps, "resolution": a.res, "patch": k, "per_image": a.per_image,
            "patches": len(allp), "kept": len(best), "patch_stage_s": round(seconds, 3),
            "maps_per_s": round(a.maps / seconds, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _features(a):
    """The same L2-normalised features and initial centroids in every process (seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    # weakly separated clusters on the sphere: Lloyd keeps moving for all iterations
    centres = rng.standard_normal((a.k, a.dim), dtype=np.float32)
    X = rng.standard_normal((a.n, a.dim), dtype=np.float32) * 10.0
    X += centres[rng.integers(0, a.k, a.n)]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    init = X[rng.choice(a.n, a.k, replace=False)].copy()
    return X, init


def sklearn_stage(a) -> dict:
    from sklearn.cluster import KMeans

    X, init = _features(a)
    t = time.perf_counter()
    sk = KMeans(n_clusters=a.k, init=init, n_init=1, max_iter=a.iters, tol=0.0, algorithm="lloyd",
                random_state=0).fit(X)
    return {"stage": "sklearn", "n": a.n, "dim": a.dim, "k": a.k, "sklearn_s": round(time.perf_counter() - t, 3),
            "sklearn_n_iter": int(sk.n_iter_), "sklearn_inertia": round(float(sk.inertia_), 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def faiss_stage(a) -> dict:
    from mining.cluster import FaissKMeans

    X, init = _features(a)
    iters = a.faiss_iters or a.iters
    t = time.perf_counter()
    fk = FaissKMeans(n_clusters=a.k, n_iter=iters, spherical=False, random_state=0).fit(X, init_centroids=init)
    return {"stage": "faiss", "n": a.n, "dim": a.dim, "k": a.k, "faiss_s": round(time.perf_counter() - t, 3),
            "faiss_n_iter": iters, "faiss_inertia": round(fk.inertia_, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _child(stage: str, argv: list[str], env: dict | None = None) -> dict:
    import os

    proc = subprocess.run([sys.executable, __file__, "--stage", stage, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"stage {stage} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=int, default=10_000)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--patch", type=int, default=None, help="default: 50 px at 256 px (docs/method.md §3)")
    p.add_argument("--per-image", type=int, default=5)
    p.add_argument("--per-label", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=64, help="maps per batch")
    p.add_argument("--n", type=int, default=100_000, help="feature rows")
    p.add_argument("--dim", type=int, default=1280, help="feature width (SD v1.5 up_blocks[1])")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--faiss-iters", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=["patch", "faiss", "sklearn"], default=None, help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    a = p.parse_args(raw)
    if a.stage:  # child process: one stage, one JSON line
        print(json.dumps({"patch": patch_stage, "faiss": faiss_stage, "sklearn": sklearn_stage}[a.stage](a)))
        return
    patch = _child("patch", raw)
    print(json.dumps(patch), flush=True)
    sk = None if a.skip_sklearn else _child("sklearn", raw)
    if sk:
        print(json.dumps(sk), flush=True)
    # scikit-learn stops early once no label changes (even with tol=0); FAISS always runs n_iter
    # iterations, so it runs the count scikit-learn actually ran
    fa_args = raw + (["--faiss-iters", str(sk["sklearn_n_iter"])] if sk else [])
    fa = _child("faiss", fa_args)
    print(json.dumps(fa), flush=True)
    # FAISS's OpenMP threads (and its OpenMP BLAS) spin-wait: on a small machine shared with other
    # work one thread can beat all cores; shown for reference
    fa1 = _child("faiss", fa_args, env={"OMP_NUM_THREADS": "1"})
    print(json.dumps({**fa1, "stage": "faiss, OMP_NUM_THREADS=1", "cpus": os.cpu_count(),
                      "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)
    print(json.dumps({
        "patch_stage_s": patch["patch_stage_s"],
        "faiss_s": fa["faiss_s"],
        "sklearn_s": sk["sklearn_s"] if sk else None,
        "faiss_over_sklearn": round(fa["faiss_s"] / sk["sklearn_s"], 4) if sk else None,
        "peak_rss_mb": max(patch["peak_rss_mb"], fa["peak_rss_mb"], sk["peak_rss_mb"] if sk else 0.0),
    }))


if __name__ == "__main__":
    main()
