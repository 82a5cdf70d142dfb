"""Pictures every report shares: heatmap overlays, patch crops, grids, file-safe names.

Heatmaps are blurred (sigma 10 px at 256 px, scaled with the resolution) and max-normalised
for display only (docs/method.md §2); tables keep the raw values.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diffmine.core.files import write_bytes
from typicality.formula import upsample

DISPLAY_SIGMA_AT_256 = 10.0  # docs/method.md §2: Gaussian blur sigma 10 px, visualisation only

# a perceptually ordered dark-to-bright colour ramp (inferno-like anchors)
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def safe_name(text: str, max_len: int = 60) -> str:
    """A file-name-safe, collision-free stem for an arbitrary id or label."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:max_len] or "x"
    return f"{slug}-{hashlib.sha1(str(text).encode('utf-8')).hexdigest()[:8]}"


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (replicate padding)."""
    a = np.asarray(a, dtype=np.float32)
    if sigma <= 0:
        return a
    r = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    t = torch.from_numpy(a)[None, None]
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def display_heatmap(typ_map: np.ndarray, resolution: int | None = None) -> np.ndarray:
    """Blur, clip negatives (atypical) to 0 and divide by the maximum: values in [0, 1]."""
    m = np.asarray(typ_map, dtype=np.float32)
    res = resolution or max(m.shape)
    m = np.clip(gaussian_blur(m, DISPLAY_SIGMA_AT_256 * res / 256.0), 0.0, None)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


def colorize(heat: np.ndarray) -> np.ndarray:
    """[0, 1] array -> uint8 RGB through the colour ramp."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(h).astype(int).clip(0, len(_RAMP) - 2)
    f = (h - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - f) + _RAMP[lo + 1] * f).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] heatmap (resized to the image) over an HxWx3 uint8 image."""
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = upsample(torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32)), (h, w)).numpy()
    col = colorize(heat).astype(np.float32)
    return np.round(image.astype(np.float32) * (1 - alpha) + col * alpha).astype(np.uint8)


def _upscale(img: Image.Image, min_side: int) -> Image.Image:
    if min(img.size) >= min_side:
        return img
    f = int(np.ceil(min_side / min(img.size)))
    return img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)


BOX_COLORS = {"cluster": (0, 255, 0), "random": (255, 230, 0), "least typical": (0, 160, 255)}


def save_heatmap_pair(image: np.ndarray, typ_map: np.ndarray, path: Path, boxes: Sequence = (),
                      min_side: int = 256) -> Path:
    """The image and its heatmap overlay side by side, with `boxes` outlined on both.

    boxes: (x0, y0, x1, y1) or ((x0, y0, x1, y1), kind) with kind a key of BOX_COLORS.
    """
    res = image.shape[0]
    heat = display_heatmap(typ_map, res)
    left, right = Image.fromarray(image), Image.fromarray(overlay(image, heat))
    pair = Image.new("RGB", (2 * res + 4, res), (255, 255, 255))
    pair.paste(left, (0, 0))
    pair.paste(right, (res + 4, 0))
    pair = _upscale(pair, min_side)
    f = pair.size[1] / res
    draw = ImageDraw.Draw(pair)
    for b in boxes:
        (x0, y0, x1, y1), kind = (b, "cluster") if len(b) == 4 else b
        for dx in (0, res + 4):
            draw.rectangle([(x0 + dx) * f, y0 * f, (x1 + dx) * f - 1, y1 * f - 1], outline=BOX_COLORS[kind],
                           width=max(1, int(f)))
    path.parent.mkdir(parents=True, exist_ok=True)
    pair.save(path)
    return path


def crop(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    return image[y0:y1, x0:x1]


def save_patch(image: np.ndarray, box: Sequence[int], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(crop(image, box))).save(path)
    return path


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: Path, cell: int = 64, pad: int = 2) -> Path:
    """Patches as a grid: one row per cluster (best first), nearest-to-centroid on the left."""
    n_rows = max(1, len(rows))
    n_cols = max([len(r) for r in rows] + [1])
    grid = Image.new("RGB", (n_cols * (cell + pad) + pad, n_rows * (cell + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, patch in enumerate(row):
            tile = Image.fromarray(np.ascontiguousarray(patch)).resize((cell, cell), Image.NEAREST
                                                                      if patch.shape[0] < cell else Image.BICUBIC)
            grid.paste(tile, (pad + j * (cell + pad), pad + i * (cell + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path




def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, png_bytes(pixels))
