"""Held-out test images from domains a small base's VAE was never trained on.

The shapes and textures come from a generator of their own (not diffmine.datasets.broad's
procedural images): gratings, checkers, hatching, rings, rotated ellipses and pseudo-glyphs
(strokes on a 5 x 7 grid). Digits are sklearn's held-out split (broad.digits_split), radiographs
come from a seed sequence the corpus does not use, photo crops from the scikit-image photographs
the corpus leaves out (broad.PHOTOS_HELDOUT). Every image is seeded from (seed, domain, index).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

HELDOUT_DOMAINS = ("shapes", "textures", "digits", "radiographs", "photos")
RADIOGRAPH_SEED = 777  # the corpus draws its radiographs from [10000 + seed, i]


def _c(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _glyph(d: ImageDraw.ImageDraw, rng, x0, y0, w, h, colour, width) -> None:
    """A pseudo-glyph: 2-4 strokes between the nodes of a 5 x 7 grid (letter-like, not a font)."""
    nodes = [(x0 + w * i / 4, y0 + h * j / 6) for i in range(5) for j in range(7)]
    for _ in range(rng.integers(2, 5)):
        a, b = rng.choice(len(nodes), 2, replace=False)
        d.line([nodes[a], nodes[b]], fill=colour, width=width)


def shapes_image(rng: np.random.Generator, size: int) -> Image.Image:
    ss = 4
    img = Image.new("RGB", (size * ss,) * 2, _c(rng))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):
        kind = rng.integers(3)
        cx, cy = rng.uniform(0.1, 0.9, 2) * size * ss
        r = rng.uniform(0.06, 0.25) * size * ss
        width = max(ss, int(rng.uniform(0.015, 0.05) * size * ss))
        if kind == 0:  # concentric rings
            for k in range(int(rng.integers(2, 5))):
                rr = r * (1 - k * 0.25)
                d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], outline=_c(rng), width=width)
        elif kind == 1:  # a rotated ellipse as a polygon, filled
            a, e = rng.uniform(0, math.pi), rng.uniform(0.3, 0.8)
            pts = [(cx + r * math.cos(t) * math.cos(a) - r * e * math.sin(t) * math.sin(a),
                    cy + r * math.cos(t) * math.sin(a) + r * e * math.sin(t) * math.cos(a))
                   for t in np.linspace(0, 2 * math.pi, 40)]
            d.polygon(pts, fill=_c(rng))
        else:
            _glyph(d, rng, cx - r / 2, cy - r, r, 2 * r, _c(rng), width)
    return img.resize((size, size), Image.LANCZOS)


def textures_image(rng: np.random.Generator, size: int) -> Image.Image:
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    kind = rng.integers(3)
    a = rng.uniform(0, math.pi)
    t = u * math.cos(a) + v * math.sin(a)
    period = rng.uniform(3, 16) / size
    if kind == 0:  # a sinusoidal grating under a Gaussian envelope
        cx, cy, s = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5)
        field = 0.5 + 0.5 * np.cos(2 * math.pi * t / period) * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * s * s))
    elif kind == 1:  # a rotated checkerboard
        t2 = -u * math.sin(a) + v * math.cos(a)
        field = ((np.floor(t / period) + np.floor(t2 / period)) % 2).astype(float)
    else:  # hatching: thin lines at two angles
        t2 = u * math.cos(a + math.pi / 3) + v * math.sin(a + math.pi / 3)
        field = np.maximum((t / period) % 1 < 0.25, (t2 / period) % 1 < 0.25).astype(float)
    fg, bg = np.array(_c(rng)), np.array(_c(rng))
    return Image.fromarray(np.round(field[..., None] * fg + (1 - field[..., None]) * bg).astype(np.uint8))


def heldout_images(domain: str, n: int, size: int = 64, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(ids, (n, 3, size, size) float32 in [-1, 1]) of `domain` (one of HELDOUT_DOMAINS)."""
    from diffmine.core.images import to_tensor_array

    rng_of = lambda i: np.random.default_rng([seed, HELDOUT_DOMAINS.index(domain), i])  # noqa: E731
    if domain == "shapes":
        images = [shapes_image(rng_of(i), size) for i in range(n)]
    elif domain == "textures":
        images = [textures_image(rng_of(i), size) for i in range(n)]
    elif domain == "digits":
        from sklearn.datasets import load_digits

        from diffmine.datasets.broad import digit_image, digits_split

        d, (_, test) = load_digits(), digits_split()
        images = [digit_image(d.images[k], size) for k in test[:n]]
    elif domain == "radiographs":
        from diffmine.datasets.radiographs import _draw_findings, radiograph

        images = []
        for i in range(n):
            rng = np.random.default_rng([RADIOGRAPH_SEED + seed, i])
            img, _ = radiograph(rng, _draw_findings(rng), size)
            images.append(Image.fromarray(np.round(img * 255).astype(np.uint8)).convert("RGB"))
    elif domain == "photos":
        from diffmine.datasets.broad import PHOTOS_HELDOUT, photo_crop, photo_sources

        photos = photo_sources(PHOTOS_HELDOUT, ())
        names = sorted(photos)
        images = [photo_crop(rng_of(i), photos[names[i % len(names)]], size) for i in range(n)]
    else:
        raise ValueError(f"unknown held-out domain {domain!r}; domains are {', '.join(HELDOUT_DOMAINS)}")
    ids = [f"{domain}_{i:04d}" for i in range(len(images))]
    return ids, np.stack([to_tensor_array(im.convert("RGB")) for im in images]).astype(np.float32)
