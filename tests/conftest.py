"""Shared fixtures: a real tiny SD-architecture model saved as a diffusers folder, and real image files."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

# Tests compare files written by other processes (an `accelerate launch`, a killed run) with this
# one's byte for byte. A CPU's BLAS splits its sums by thread count, so every process of the suite
# runs with the same intra-op threads as this one: the processes it starts inherit OMP_NUM_THREADS.
os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


@pytest.fixture(scope="session")
def tiny_bundle():
    from diffmine.core.tiny import build_tiny_bundle

    return build_tiny_bundle(resolution=32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_bundle):
    """A diffusers SD folder with random tiny weights (32 px images, 8x8 latents)."""
    out = tmp_path_factory.mktemp("tiny_model")
    tiny_bundle.save_pretrained(out)
    return out


def make_color_dataset(root, n_per_label=6, size=32, labels=("red", "blue"), seed=0):
    """Folder-per-label dataset: each label's images carry a square of its colour on noise."""
    rng = np.random.default_rng(seed)
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            img = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2] = colors[label]
            Image.fromarray(img).save(root / label / f"img_{i:03d}.png")
    return root


@pytest.fixture
def color_dataset(tmp_path):
    return make_color_dataset(tmp_path / "data")


def make_digits_folder(root, labels, n_per_label=6):
    """Upscaled sklearn digits (white on black, 64 px), a folder per label: images the shipped
    small model (facades only) reconstructs far below the guard's floor."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    for k, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for i in range(n_per_label):
            a = np.round(images[k * n_per_label + i] / 16 * 255).astype(np.uint8)
            Image.fromarray(a).convert("RGB").resize((64, 64), Image.BILINEAR).save(root / label / f"d{i:02d}.png")
    return root
