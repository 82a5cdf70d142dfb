"""Seconds per finetuning step of the tiny model on this machine (the issue-2 figure).

Runs the real finetuner (`finetune.train.train`) on a generated towns dataset for a few steps from
the shipped model (no VAE training), and reads the step times from its train_log.jsonl.
    python benchmarks/finetune_step.py [--batch-size 32] [--steps 20]
Last line: {"tiny_step_s": ..., "batch_size": ..., "images_per_s": ...}
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

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
    # skip the first 5 steps (allocator warm-up); elapsed_s is measured from the loop's start
    step_s = (log[-1]["elapsed_s"] - log[4]["elapsed_s"]) / (len(log) - 5)
    print(f"tiny model, batch {a.batch_size}: {step_s:.3f} s/step, {a.batch_size / step_s:.1f} images/s")
    print(json.dumps({"tiny_step_s": round(step_s, 4), "batch_size": a.batch_size,
                      "images_per_s": round(a.batch_size / step_s, 2)}))


if __name__ == "__main__":
    main()
