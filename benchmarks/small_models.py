"""Small models a newcomer meets first: the first finetune's wall time, and the demo's metrics.

    python benchmarks/small_models.py [--skip-demo]

1. first run: `diffmine finetune --data DATA --out M --base tiny --max-steps 20` from a fresh output
   folder, on 120 generated 64 px images (towns generator, another seed than the shipped data), timed
   as a user sees it (a new process: imports, loading, encoding, training, export, samples).
2. the demo's four metrics with the shipped model (`diffmine demo`, held-out split).
Last line: {"first_run_s", "pointing_game", "pixel_auroc", "elements_recovered"}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-demo", action="store_true", help="only the first-run time")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from diffmine.datasets.towns import generate_towns

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_towns(Path(tmp) / "towns", n_train=30, n_test=1, size=64, seed=7, progress=False) / "train"
        cmd = [sys.executable, "-m", "diffmine", "finetune", "--data", str(data), "--out", str(Path(tmp) / "M"),
               "--base", "tiny", "--max-steps", "20"]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        first_run = time.time() - start
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        phases = [l for l in proc.stdout.splitlines() if l.startswith("[finetune")]
        print("first run (120 images, 64 px, 20 steps, --base tiny): %.1f s" % first_run)
        for line in phases:
            print("  " + line)
        metrics = {}
        if not a.skip_demo:
            out = Path(tmp) / "demo"
            proc = subprocess.run([sys.executable, "-m", "diffmine", "demo", "--out", str(out)], cwd=ROOT,
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            metrics = json.loads((out / "metrics.json").read_text())
            for k in ("pointing_game", "pixel_auroc", "elements_recovered", "shared_over_characteristic", "wall_s"):
                print(f"demo {k}: {metrics[k]}")
    print(json.dumps({"first_run_s": round(first_run, 1), "pointing_game": metrics.get("pointing_game"),
                      "pixel_auroc": metrics.get("pixel_auroc"), "elements_recovered": metrics.get("elements_recovered")}))


if __name__ == "__main__":
    main()
