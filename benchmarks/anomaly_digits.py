"""One-class anomaly detection on scikit-learn's digits: the diffusion detector vs PyOD baselines.

    python -m benchmarks.anomaly_digits                 # the strict one-class protocol (default, the README's figures)
    python -m benchmarks.anomaly_digits --mode shared   # one model finetuned with the digit as label (not one-class)

Digits (8x8, 0..16) are scaled to [0, 1]; baselines see the 64 pixels, the diffusion detector the
same pixels upsampled to --resolution. Split: half for training, stratified, seed 0 (--split-seed). Modes: see
anomaly_common.run_diffusion (per digit, on that digit's training images only: a finetune of the
shipped towns model for the denoising kinds; the features kind reads the towns model's DIFT
features as they are) and run_shared (one model with the digit as label, atypicality margin per
digit). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.anomaly_common import add_arguments, report, run_baselines, run_diffusion, run_shared


def main(argv=None) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, resolution=32, steps=30)
    args = parser.parse_args(argv)
    started = time.time()
    x, y = load_digits(return_X_y=True)
    images = (x.reshape(-1, 8, 8) / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(images, y, test_size=0.5, stratify=y, random_state=args.split_seed)
    classes = args.classes if args.classes else list(range(10))
    print(f"digits: {len(x_tr)} train, {len(x_te)} test; classes {classes}; resolution {args.resolution}; "
          f"finetune {args.steps} steps x {args.finetune_batch} at lr {args.lr}", flush=True)
    results = run_baselines(x_tr, y_tr, x_te, y_te, classes, args.contamination, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_shared if args.mode == "shared" else run_diffusion
        diff, seconds = run(x_tr, y_tr, x_te, y_te, classes, args, Path(args.work or tmp))
    results = {**diff, **results}
    kinds = args.scores if args.mode == "per-class" else ["atypicality", "reconstruction"]
    report(results, classes, kinds, seconds, started, y_te, "anomaly_digits", protocol=vars(args))


if __name__ == "__main__":
    main()
