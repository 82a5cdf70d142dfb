"""Defects: procedural product textures with small planted defects and a pixel mask for each.

The inspection problem in miniature (normal products vs defective ones, where a defect is a
small part of a large image). Each image is one texture of a product family (`weave`: a plain
woven fabric; `grid`: a wire mesh; `noise`: a mottled surface such as leather), under per-image
variation of period, orientation, phase, colour, brightness and fine grain. Defects:

* speckle      a cluster of small dark or bright dots (about 5 % of the side)
* scratch      a thin straight bright or dark line (6-12 % of the side)
* hole         a dark round hole (radius 1.5-3 % of the side)
* colour_spot  a soft blob of another hue (radius 2-4 % of the side)
* weave_finer / weave_coarser   a rectangle (25-40 % of the side) where the texture's period
               is halved / doubled: a change of texture rather than a local flaw
* rotated      the whole texture turned by 20-40 degrees: every patch is plausible on its own
               (weave and grid only: the noise texture has no direction to turn)
* rescaled     the whole texture's period times 0.65-0.8 or 1.3-1.55

The first four are "local" defects, the next two "weave" changes and the last two "global" ones
(column `group`).

Layout written by `generate_defects(out)` (the towns generator's, one data folder per split):

    out/done.json                      the parameters, written last (a complete output)
    out/<split>/metadata.jsonl         file_name, label ("good" or the defect), split, group
                                       ("local", "weave" or null), mask_file (null when good), box
    out/<split>/images/<label>/<split>_0000.png   RGB, size x size
    out/<split>/masks/<label>/<split>_0000.png    mode L: 255 on the defect, 0 elsewhere

Splits: `train` holds normal images only (what a detector is fitted on: `diffmine anomaly fit
--data out/train/images`); `val` is a small labelled split for choosing settings; `test` is the
held-out labelled split. Every image is seeded from (seed, split, label, index) alone, so
outputs are byte-identical for the same parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from diffmine.datasets.generated import DONE_FILE, already_generated
from diffmine.core.files import output_folder

GENERATOR_VERSION = 2  # bump when rendering changes: invalidates reused outputs
GOOD = "good"
LOCAL_DEFECTS = ("speckle", "scratch", "hole", "colour_spot")
WEAVE_CHANGES = ("weave_finer", "weave_coarser")
GLOBAL_CHANGES = ("rotated", "rescaled")
DEFECTS = LOCAL_DEFECTS + WEAVE_CHANGES + GLOBAL_CHANGES  # appended: the earlier labels keep their seeds
TEXTURES = ("weave", "grid", "noise")
SPLITS = ("train", "val", "test")
MASK_ALPHA = 0.05  # a pixel belongs to the mask where the defect's opacity exceeds this

# Per texture family: period range in px at 256 px (scaled with the size), base colour (RGB).
_PERIOD = {"weave": (14.0, 17.0), "grid": (18.0, 22.0), "noise": (3.0, 3.6)}
_COLOUR = {"weave": (196, 172, 138), "grid": (150, 160, 170), "noise": (120, 84, 60)}


def defects_for(texture: str) -> tuple[str, ...]:
    """The defect labels `texture` can show (an isotropic texture has no orientation to change)."""
    return tuple(d for d in DEFECTS if d != "rotated" or texture != "noise")


def defect_group(label: str) -> str | None:
    """"local", "weave", "global", or None for a good image."""
    return ("local" if label in LOCAL_DEFECTS else "weave" if label in WEAVE_CHANGES
            else "global" if label in GLOBAL_CHANGES else None)


def _smooth_edge(d: np.ndarray) -> np.ndarray:
    """Opacity from a signed distance (negative inside): 1 inside, 0 outside, a 1-px ramp between."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _intensity(texture: str, u: np.ndarray, v: np.ndarray, period: float, rng_field: np.ndarray) -> np.ndarray:
    """Texture intensity in about [0.3, 1] at rotated coordinates (u, v) for one period."""
    if texture == "weave":
        fu, fv = u / period, v / period
        across_warp, across_weft = np.sin(np.pi * (fu % 1.0)), np.sin(np.pi * (fv % 1.0))
        warp_on_top = (np.floor(fu) + np.floor(fv)) % 2 == 0
        top = np.where(warp_on_top, across_warp * (0.7 + 0.3 * across_weft), across_weft * (0.7 + 0.3 * across_warp))
        return 0.35 + 0.65 * np.sqrt(np.clip(top, 0, 1))
    if texture == "grid":
        du = np.abs((u / period + 0.5) % 1.0 - 0.5) * period  # px to the nearest wire
        dv = np.abs((v / period + 0.5) % 1.0 - 0.5) * period
        wire = np.exp(-np.minimum(du, dv) ** 2 / (2 * (period * 0.08) ** 2))
        return 0.95 - 0.6 * wire
    # noise: a band-limited random field, its grain size the "period"
    field = ndimage.gaussian_filter(rng_field, sigma=period, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-9)
    return np.clip(0.68 + 0.16 * field, 0.2, 1.0)


def _texture(rng: np.random.Generator, texture: str, size: int, period_scale: np.ndarray | None = None,
             params: dict | None = None) -> tuple[np.ndarray, dict]:
    """(size, size, 3) float image in 0..255 and its parameters (drawn unless given)."""
    s = size / 256.0
    if params is None:
        lo, hi = _PERIOD[texture]
        params = {"period": float(rng.uniform(lo, hi) * s), "angle": float(rng.uniform(-4, 4)),
                  "phase": rng.uniform(0, 64, 2).tolist(), "colour": (np.array(_COLOUR[texture]) *
                  rng.uniform(0.9, 1.1) + rng.normal(0, 6, 3)).tolist(),
                  "grain_seed": int(rng.integers(2 ** 31))}
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.deg2rad(params["angle"])
    u = x * np.cos(a) + y * np.sin(a) + params["phase"][0]
    v = -x * np.sin(a) + y * np.cos(a) + params["phase"][1]
    grain_rng = np.random.default_rng(params["grain_seed"])
    field = grain_rng.normal(size=(size, size))
    grain = grain_rng.normal(0, 0.035, (size, size))
    base = _intensity(texture, u, v, params["period"], field)
    if period_scale is not None:  # a texture change inside a region (weight = period_scale's mask)
        factor, weight = period_scale
        changed = _intensity(texture, u, v, params["period"] * factor, field)
        base = base * (1 - weight) + changed * weight
    img = np.asarray(params["colour"])[None, None, :] * (base * (1 + grain))[..., None]
    return img, params


def _disk(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return _smooth_edge(np.hypot(x - cx, y - cy) - r)


def _segment(size: int, p0, p1, half_width: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.hypot(x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1]))
    return _smooth_edge(dist - half_width)


def _local_defect(rng: np.random.Generator, kind: str, size: int, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (size, size) in 0..1, RGB colour of the defect (size, size, 3)) for a local defect."""
    s = size / 256.0
    margin = 20 * s
    cx, cy = rng.uniform(margin, size - margin, 2)
    paint = np.broadcast_to(colour, (size, size, 3)).astype(np.float64)
    if kind == "speckle":
        alpha = np.zeros((size, size))
        dark = rng.random() < 0.5
        for _ in range(int(rng.integers(6, 12))):
            dx, dy = rng.normal(0, 3.5 * s, 2)
            alpha = np.maximum(alpha, _disk(size, cx + dx, cy + dy, rng.uniform(1.0, 1.8) * s))
        paint = paint * (0.25 if dark else 0.0) + (0 if dark else 245)
        return alpha, paint
    if kind == "scratch":
        length = rng.uniform(0.06, 0.12) * size
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * length / 2
        alpha = _segment(size, (cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), rng.uniform(0.8, 1.2) * s)
        bright = rng.random() < 0.6
        return alpha, paint * 0.0 + (235 if bright else 40)
    if kind == "hole":
        r = rng.uniform(0.015, 0.03) * size
        return _disk(size, cx, cy, r), paint * 0.0 + np.array([28, 24, 22])
    if kind == "colour_spot":
        r = rng.uniform(0.02, 0.04) * size
        hue = np.roll(colour, int(rng.integers(1, 3)))  # another hue of about the same brightness
        alpha = _disk(size, cx, cy, r) * 0.85
        return alpha, np.broadcast_to(hue, (size, size, 3)).astype(np.float64)
    raise ValueError(f"unknown local defect {kind!r}")


def render(rng: np.random.Generator, label: str, texture: str = "weave", size: int = 256
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (size, size, 3), mask bool (size, size), the same image without its defect)."""
    if label != GOOD and label not in DEFECTS:
        raise ValueError(f"unknown label {label!r}; labels are {GOOD}, {', '.join(DEFECTS)}")
    clean, params = _texture(rng, texture, size)
    mask = np.zeros((size, size), bool)
    img = clean
    if label in GLOBAL_CHANGES:  # the whole image changes: the mask is all of it
        changed = dict(params)
        if label == "rotated":
            changed["angle"] = params["angle"] + float(rng.choice([-1, 1]) * rng.uniform(20, 40))
        else:
            changed["period"] = params["period"] * float(rng.choice([rng.uniform(0.65, 0.8), rng.uniform(1.3, 1.55)]))
        img, _ = _texture(rng, texture, size, params=changed)
        mask = np.ones((size, size), bool)
    elif label in WEAVE_CHANGES:
        side = rng.uniform(0.25, 0.4, 2) * size
        x0, y0 = rng.uniform(0, size - side[0]), rng.uniform(0, size - side[1])
        y, x = np.mgrid[0:size, 0:size]
        inside = np.maximum.reduce([x0 - x, x - (x0 + side[0]), y0 - y, y - (y0 + side[1])])
        weight = _smooth_edge(inside)
        factor = 0.5 if label == "weave_finer" else 2.0
        img, _ = _texture(rng, texture, size, (factor, weight), params)
        mask = weight > MASK_ALPHA
    elif label in LOCAL_DEFECTS:
        alpha, paint = _local_defect(rng, label, size, np.asarray(params["colour"]))
        img = clean * (1 - alpha[..., None]) + paint * alpha[..., None]
        mask = alpha > MASK_ALPHA
    to_u8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(img), mask, to_u8(clean)


def _box(mask: np.ndarray) -> list[int] | None:
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _write_split(folder: Path, split: str, counts: dict[str, int], texture: str, size: int, seed: int,
                 progress: bool) -> None:
    from tqdm.auto import tqdm

    split_id = SPLITS.index(split)
    labels = [GOOD] + list(DEFECTS)
    jobs = [(label, i) for label in labels for i in range(counts.get(label, 0))]
    rows = []
    for label, i in tqdm(jobs, desc=f"defects {split}", disable=not progress):
        rng = np.random.default_rng([seed, split_id, labels.index(label), i])
        image, mask, _ = render(rng, label, texture, size)
        name = f"{label}/{split}_{i:04d}.png"
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "images" / name)
        mask_file = None
        if label != GOOD:
            (folder / "masks" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / "masks" / name)
            mask_file = f"masks/{name}"
        rows.append({"file_name": f"images/{name}", "label": label, "split": split, "group": defect_group(label),
                     "mask_file": mask_file, "box": _box(mask)})
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def generate_defects(out: str | Path, n_train: int = 100, n_val: int = 4, n_test: int = 10, size: int = 256,
                     texture: str = "weave", seed: int = 0, progress: bool = False) -> Path:
    """Write the defects dataset to `out` (train/, val/, test/ data folders) and return `out`.

    train: `n_train` good images; val and test: `n_val` / `n_test` images of every defect and
    twice as many good ones. An existing complete output with the same parameters is reused; the
    output is built in a temporary sibling folder and renamed into place (never half-written).
    """
    out = Path(out)
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"n_train, n_val and n_test must be >= 1, got {n_train}, {n_val}, {n_test}")
    if not 64 <= size <= 1024:
        raise ValueError(f"size must be in [64, 1024] px, got {size}")
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; textures are {', '.join(TEXTURES)}")
    params = {"generator": "diffmine.defects", "version": GENERATOR_VERSION, "texture": texture, "n_train": n_train,
              "n_val": n_val, "n_test": n_test, "size": size, "seed": seed}
    if already_generated(out, params, "defects"):
        return out
    splits = {"train": {GOOD: n_train},
              "val": {GOOD: 2 * n_val, **{d: n_val for d in defects_for(texture)}},
              "test": {GOOD: 2 * n_test, **{d: n_test for d in defects_for(texture)}}}
    with output_folder(out, owned=None) as tmp:  # a generated dataset: replaced whole
        for split, counts in splits.items():
            _write_split(tmp / split, split, counts, texture, size, seed, progress)
        (tmp / DONE_FILE).write_text(json.dumps(params, indent=2) + "\n")
    return out


def read_split(folder: str | Path) -> list[dict]:
    """The metadata rows of one split folder, each with `mask` (bool array, all False when good) added."""
    folder = Path(folder)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        size = Image.open(folder / row["file_name"]).size
        row["mask"] = (np.asarray(Image.open(folder / row["mask_file"])) > 127 if row["mask_file"]
                       else np.zeros(size[::-1], bool))
    return rows
