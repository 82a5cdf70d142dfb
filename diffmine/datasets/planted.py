"""Planted: small characteristic elements on busy backgrounds, the answer known to the pixel.

Each label has one characteristic element, about a fifth of the image side: thin strokes and
outlines as well as filled shapes (a small VAE loses thin strokes first):

    ring      a thin circle outline          cross     two thin crossing strokes
    wedge     a filled triangle              tile      a filled square

Every image also shows 2-3 distractors drawn from one distribution for all labels (a filled disc,
a short thick bar, a rectangle outline) on a textured background, with colours drawn independently
of the label: only the element's shape says the label. Layout (as diffmine.datasets.towns):

    out/train/metadata.jsonl   file_name, label, split, elements [{kind, box, label}], mask_file
    out/train/images/<label>_train_0000.png, out/train/masks/... (value k marks elements[k-1])
    out/test/...               the held-out split; out/done.json the parameters, written last

Every image is seeded from (seed, split, label, index) alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffmine.core.files import output_folder

GENERATOR_VERSION = 1
LABELS = {"ring": "outline", "cross": "strokes", "wedge": "filled", "tile": "filled"}
DISTRACTORS = ("disc", "bar", "frame")
SPLITS = ("train", "test")
ELEMENT_SIZE = 0.2  # of the image side
SS = 4  # supersampling


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(30, 230, 3))


def _background(rng, size: int) -> Image.Image:
    v, u = (np.mgrid[0:size * SS, 0:size * SS] + 0.5) / (size * SS)
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    t = np.clip(u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1) + 0.5, 0, 1)[..., None] * 0.6
    img = a * (1 - t) + b * t + rng.normal(0, 6, (size * SS // 8, size * SS // 8, 1)).repeat(8, 0).repeat(8, 1)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _draw(d: ImageDraw.ImageDraw, kind: str, box, colour, width: int) -> None:
    x0, y0, x1, y1 = box
    if kind == "ring":
        d.ellipse(box, outline=colour, width=width)
    elif kind == "cross":
        d.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        d.line([(x0, y1), (x1, y0)], fill=colour, width=width)
    elif kind == "wedge":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif kind == "tile":
        d.rectangle(box, fill=colour)
    elif kind == "disc":
        d.ellipse(box, fill=colour)
    elif kind == "bar":
        cy = (y0 + y1) / 2
        d.rectangle([x0, cy - (y1 - y0) / 6, x1, cy + (y1 - y0) / 6], fill=colour)
    elif kind == "frame":
        d.rectangle(box, outline=colour, width=width)
    else:
        raise ValueError(f"unknown element kind {kind!r}")


def _free_box(rng, size: int, side: float, taken: list) -> list[float]:
    """A square box of `side` px that overlaps no box in `taken` (a few tries, then anywhere)."""
    for _ in range(50):
        x, y = rng.uniform(1, size - side - 1, 2)
        box = [x, y, x + side, y + side]
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            return box
    return box


def render(rng: np.random.Generator, label: str, size: int = 64, element_size: float = ELEMENT_SIZE
           ) -> tuple[Image.Image, Image.Image, list[dict]]:
    """One image of `label`: (RGB image, L mask, elements); `element_size` sizes the label's element only
    (a control with a larger one), the distractors keep ELEMENT_SIZE."""
    img = _background(rng, size)
    mask = Image.new("L", img.size, 0)
    d, m = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    kinds = [(label, label)] + [(str(k), None) for k in rng.choice(DISTRACTORS, int(rng.integers(2, 4)))]
    taken, elements = [], []
    for n, (kind, owner) in enumerate(kinds, start=1):
        side = size * (element_size if owner else ELEMENT_SIZE) * rng.uniform(0.85, 1.15)
        box = _free_box(rng, size, side, taken)
        taken.append(box)
        width = max(SS, int(round(size * SS * rng.uniform(0.02, 0.035))))
        scaled = [v * SS for v in box]
        _draw(d, kind, scaled, _colour(rng), width)
        _draw(m, kind, scaled, n, width)
        elements.append({"kind": kind, "box": [int(math.floor(box[0])), int(math.floor(box[1])),
                                               int(math.ceil(box[2])), int(math.ceil(box[3]))], "label": owner})
    c = SS // 2
    mask = Image.fromarray(np.ascontiguousarray(np.asarray(mask)[c::SS, c::SS]), "L")
    return img.resize((size, size), Image.LANCZOS), mask, elements


def generate_planted(out: str | Path, n_train: int = 100, n_test: int = 25, size: int = 64, seed: int = 0,
                     progress: bool = False, element_size: float = ELEMENT_SIZE) -> Path:
    """Write the planted-element set (train/ and test/, n images per label each) to `out`."""
    from tqdm.auto import tqdm

    out = Path(out)
    params = {"generator": "diffmine.planted", "version": GENERATOR_VERSION, "labels": list(LABELS),
              "n_train": n_train, "n_test": n_test, "size": size, "seed": seed,
              **({"element_size": element_size} if element_size != ELEMENT_SIZE else {})}  # old sets stay valid
    if (out / "done.json").is_file() and json.loads((out / "done.json").read_text()) == params:
        return out
    with output_folder(out, owned=None) as tmp:  # a generated dataset: replaced whole
        for split_id, (split, n) in enumerate(zip(SPLITS, (n_train, n_test))):
            folder = tmp / split
            (folder / "images").mkdir(parents=True)
            (folder / "masks").mkdir()
            rows = []
            jobs = [(k, lab, i) for k, lab in enumerate(LABELS) for i in range(n)]
            for k, lab, i in tqdm(jobs, desc=f"planted {split}", disable=not progress):
                image, mask, elements = render(np.random.default_rng([seed, split_id, k, i]), lab, size, element_size)
                name = f"{lab}_{split}_{i:04d}.png"
                image.save(folder / "images" / name)
                mask.save(folder / "masks" / name)
                rows.append({"file_name": f"images/{name}", "label": lab, "split": split, "elements": elements,
                             "mask_file": f"masks/{name}"})
            (folder / "metadata.jsonl").write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        (tmp / "done.json").write_text(json.dumps(params, indent=2) + "\n")
    return out
