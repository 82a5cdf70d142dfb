"""Seconds per finetuning step of the tiny model on this machine (the issue-2 figure).

Runs the real finetuner (`finetune.train.train`) on a generated towns dataset for a few steps from
the shipped model (no VAE training), and reads the step times from its train_log.jsonl.
    python benchmarks/finetune_step.py [--batch-size 32] [--steps 20]
The step times (after 5 warm-up steps) are the items: their median and mean carry a 95 % interval
(bootstrap over steps), and the run is appended to results/finetune_step.json.
Last line: {"tiny_step_s": ..., "tiny_step_s_ci": [...], "batch_size": ..., "images_per_s": ...}
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.records, as a script too

from finetune.train import train
from finetune.config import TrainConfig
from diffmine.apps.demo.run import recipe, towns_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = towns_data(Path(tmp) / "towns", n_train=64, n_test=1)
        out = Path(tmp) / "model"
        prompts = {k: recipe()["train"][k] for k in ("prompt", "null_prompt", "null_rate")}
        train(TrainConfig(data=str(data / "train"), out=str(out), base="tiny", **prompts, batch_size=a.batch_size,
                          max_steps=a.steps, log_every=1, checkpoint_every=10**9, samples_per_label=0), progress=False)
        log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    import numpy as np

    from benchmarks.records import save_run
    from diffmine.evaluation.intervals import mean_estimate

    # skip the first 5 steps (allocator warm-up); elapsed_s is measured from the loop's start
    elapsed = np.array([r["elapsed_s"] for r in log])
    steps = np.diff(elapsed[4:])
    est = mean_estimate(steps)
    step_s = est["value"]
    print(f"tiny model, batch {a.batch_size}: {step_s:.3f} s/step [{est['ci'][0]:.3f}, {est['ci'][1]:.3f}], "
          f"{a.batch_size / step_s:.1f} images/s")
    last = {"tiny_step_s": round(step_s, 4), "tiny_step_s_ci": [round(x, 4) for x in est["ci"]],
            "batch_size": a.batch_size, "images_per_s": round(a.batch_size / step_s, 2)}
    save_run("finetune_step", last, [{"step": i + 5, "seconds": float(x)} for i, x in enumerate(steps)],
             protocol=vars(a))
    print(json.dumps(last))


if __name__ == "__main__":
    main()
