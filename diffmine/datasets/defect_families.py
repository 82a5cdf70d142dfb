"""Defect families for TESTING anomaly detectors: textures and defects no setting was chosen on.

A second, independent generator beside diffmine/datasets/defects.py (the one the `patches` settings
are validated on): other textures, other defect shapes, two image sizes. Nothing here may be used
to choose a setting (benchmarks/anomaly_transfer.py reports on it only).

Textures (per image: period, orientation, phase, colour, per-thread brightness and grain vary):

* twill   a grey 2/1 twill weave whose threads differ in brightness (a woven textile)
* mesh    a wire mesh, dark wires on a light ground
* grain   a streaky anisotropic noise (brushed metal, wood grain): no threads

Defects, each with a mask (True where the defect's opacity exceeds MASK_ALPHA):

* speckle       salt-and-pepper dots (black and white, 1-3 px) within about 10-15 px (256 px images)
* scratch       a thin bright or dark line, 3-6 texture periods long
* blotch        a soft-edged patch of another brightness or hue (about 12-22 px across at 256 px)
* thread        a missing or doubled thread (wire) over 2-4 periods (twill and mesh only)
* orientation   global: the whole texture turned by 15-35 degrees
* scale         global: the whole texture's period times 0.6-0.75 or 1.4-1.7 (mask: the whole image)

Lengths scale with sqrt(size / 256): a 64 px image holds fewer, smaller periods than a 256 px one,
and its defects are about half as large in pixels. Every image is drawn from
(seed, texture, size, label, index) alone, so the same arguments give the same arrays.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffmine.datasets.defects import GOOD, MASK_ALPHA, _disk, _segment, _smooth_edge

TEXTURES = ("twill", "mesh", "grain")
LOCAL = ("speckle", "scratch", "blotch", "thread")
GLOBAL = ("orientation", "scale")
LABELS = (GOOD,) + LOCAL + GLOBAL
SIZES = (64, 256)
THREADED = ("twill", "mesh")  # textures that have threads to miss or double

_PERIOD = {"twill": (11.0, 13.0), "mesh": (15.0, 18.0), "grain": (1.6, 2.0)}  # px at 256 px
_COLOUR = {"twill": (150, 150, 146), "mesh": (176, 182, 190), "grain": (164, 118, 80)}
_THREADS = 64  # per-thread brightness table, indexed by thread number modulo this


def labels_for(texture: str) -> tuple[str, ...]:
    """The defect labels a texture has (no threads, no thread defect)."""
    return tuple(lb for lb in LABELS if lb != "thread" or texture in THREADED)


def group(label: str) -> str | None:
    """"local", "global", or None for a good image."""
    return "local" if label in LOCAL else "global" if label in GLOBAL else None


def _draw_params(rng: np.random.Generator, texture: str, size: int) -> dict:
    f = np.sqrt(size / 256.0)
    lo, hi = _PERIOD[texture]
    return {"period": float(rng.uniform(lo, hi) * f), "angle": float(rng.uniform(-3, 3)),
            "phase": rng.uniform(0, 100, 2), "colour": np.array(_COLOUR[texture]) * rng.uniform(0.92, 1.08)
            + rng.normal(0, 5, 3), "gain_u": rng.uniform(0.8, 1.0, _THREADS), "gain_v": rng.uniform(0.8, 1.0, _THREADS),
            "field": rng.normal(size=(192, 192)), "grain": rng.normal(0, 0.03, (size, size))}


def _coords(size: int, p: dict) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.deg2rad(p["angle"])
    return (x * np.cos(a) + y * np.sin(a) + p["phase"][0], -x * np.sin(a) + y * np.cos(a) + p["phase"][1])


def _intensity(texture: str, u: np.ndarray, v: np.ndarray, p: dict, thread: dict | None = None) -> np.ndarray:
    """Brightness in about [0.2, 1] at texture coordinates (u, v); `thread`: a missing or doubled one."""
    per = p["period"]
    if texture == "grain":  # streaks along u: the field sampled 8x stretched along u, wrapped
        side = p["field"].shape[0]
        field = ndimage.gaussian_filter(p["field"], sigma=(1.0, 8.0), mode="wrap")
        field = (field - field.mean()) / field.std()
        coords = np.stack([(v / per) % side, (u / per) % side])
        return np.clip(0.65 + 0.15 * ndimage.map_coordinates(field, coords, order=1, mode="grid-wrap"), 0.2, 1)
    fu, fv = u / per, v / per
    iu, iv = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
    across_u, across_v = np.sin(np.pi * (fu % 1.0)), np.sin(np.pi * (fv % 1.0))
    on = np.zeros(u.shape, bool) if thread is None else thread["where"]
    if texture == "twill":
        warp_top = (iu - iv) % 3 != 0  # 2/1 twill: warp over two wefts, under one
        gu, gv = p["gain_u"][iu % _THREADS], p["gain_v"][iv % _THREADS]
        top = np.where(warp_top, across_u * gu, across_v * gv)
        if thread is not None and thread["kind"] == "missing":  # the weft shows through, in the warp's shadow
            top = np.where(on, 0.55 * across_v * gv, top)
        elif thread is not None:  # two thin warps where one was, always on top
            top = np.where(on, np.abs(np.sin(2 * np.pi * (fu % 1.0))) * gu, top)
        return 0.25 + 0.75 * np.sqrt(np.clip(top, 0, 1))
    # mesh: gaussian wires at every integer u and v
    du, dv = np.abs((fu + 0.5) % 1.0 - 0.5), np.abs((fv + 0.5) % 1.0 - 0.5)
    width = 0.09
    wire_u, wire_v = np.exp(-du ** 2 / (2 * width ** 2)), np.exp(-dv ** 2 / (2 * width ** 2))
    if thread is not None and thread["kind"] == "missing":
        wire_u = np.where(on, 0.0, wire_u)
    elif thread is not None:  # a second wire a third of a period beside it
        extra = np.exp(-(np.abs(du - 1 / 3)) ** 2 / (2 * width ** 2))
        wire_u = np.where(on, np.maximum(wire_u, extra), wire_u)
    return 0.95 - 0.65 * np.maximum(wire_u, wire_v)


def _thread_region(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, p: dict, size: int) -> dict:
    """Which pixels belong to one warp thread (wire) along 2-4 periods near the image's middle third."""
    per = p["period"]
    centre = size / 2 + rng.uniform(-size / 6, size / 6, 2)
    a = np.deg2rad(p["angle"])
    cu = centre[0] * np.cos(a) + centre[1] * np.sin(a) + p["phase"][0]
    cv = -centre[0] * np.sin(a) + centre[1] * np.cos(a) + p["phase"][1]
    k = np.floor(cu / per)
    length = rng.uniform(2, 4) * per
    # the thread's own cell column, half a period either side of its centre line
    inside = (np.abs(u / per - (k + 0.5)) <= 0.5) & (np.abs(v - cv) <= length / 2)
    return {"where": inside, "kind": "missing" if rng.random() < 0.5 else "doubled"}


def _local(rng: np.random.Generator, label: str, size: int, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(opacity (size, size) in 0..1, paint (size, size, 3) in 0..255) of a local, non-thread defect."""
    f = np.sqrt(size / 256.0)
    margin = 16 * f
    cx, cy = rng.uniform(margin, size - margin, 2)
    if label == "speckle":  # salt and pepper: each dot black or white
        alpha, paint = np.zeros((size, size)), np.zeros((size, size, 3))
        for _ in range(int(rng.integers(5, 10))):
            dx, dy = rng.normal(0, 3.5 * f, 2)
            dot = _disk(size, cx + dx, cy + dy, rng.uniform(0.7, 1.4))
            paint = np.where((dot > alpha)[..., None], 245.0 if rng.random() < 0.5 else 15.0, paint)
            alpha = np.maximum(alpha, dot)
        return alpha, paint
    if label == "scratch":
        length = rng.uniform(24, 48) * f
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * length / 2
        alpha = 0.8 * _segment(size, (cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), rng.uniform(0.4, 0.7))
        return alpha, np.full((size, size, 3), 235.0 if rng.random() < 0.5 else 30.0)
    if label == "blotch":  # brightness x 0.7 or 1.3, or a tint (a stain; visible on grey too)
        r = rng.uniform(6, 11) * f
        y, x = np.mgrid[0:size, 0:size]
        alpha = _smooth_edge((np.hypot(x - cx, y - cy) - r) / 1.5)
        kind = rng.integers(3)
        gain = np.full(3, 0.7 if kind == 0 else 1.3) if kind < 2 else rng.permutation([1.3, 1.0, 0.7])
        paint = clean * gain
        return alpha, np.clip(paint, 0, 255)
    raise ValueError(f"unknown local defect {label!r}")


def render(rng: np.random.Generator, label: str, texture: str = "twill", size: int = 64
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (size, size, 3), mask bool (size, size), the same image without its defect)."""
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; textures are {', '.join(TEXTURES)}")
    if label not in labels_for(texture):
        raise ValueError(f"label {label!r} is not one of {texture}'s: {', '.join(labels_for(texture))}")
    p = _draw_params(rng, texture, size)
    u, v = _coords(size, p)
    colour = p["colour"][None, None, :]
    to_rgb = lambda base: colour * (base * (1 + p["grain"]))[..., None]  # noqa: E731
    clean = to_rgb(_intensity(texture, u, v, p))
    img, mask = clean, np.zeros((size, size), bool)
    if label in GLOBAL:
        changed = dict(p)
        if label == "orientation":
            changed["angle"] = p["angle"] + rng.choice([-1, 1]) * rng.uniform(15, 35)
        else:
            changed["period"] = p["period"] * (rng.uniform(0.6, 0.75) if rng.random() < 0.5 else rng.uniform(1.4, 1.7))
        img = to_rgb(_intensity(texture, *_coords(size, changed), changed))
        mask = np.ones((size, size), bool)
    elif label == "thread":
        thread = _thread_region(rng, u, v, p, size)
        img = to_rgb(_intensity(texture, u, v, p, thread))
        mask = thread["where"]  # the thread's cell column along the defect: every change lies in it
    elif label in LOCAL:
        alpha, paint = _local(rng, label, size, clean)
        img = clean * (1 - alpha[..., None]) + paint * alpha[..., None]
        mask = alpha > MASK_ALPHA
    to_u8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(img), mask, to_u8(clean)


def sample(texture: str, label: str, size: int, n: int, seed: int = 0, start: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, size, size, 3) uint8, masks (n, size, size) bool): images start .. start + n - 1."""
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    if label not in labels_for(texture) or texture not in TEXTURES:
        raise ValueError(f"no {label!r} images of texture {texture!r}")
    ids = (TEXTURES.index(texture), size, LABELS.index(label))
    out = [render(np.random.default_rng([seed, *ids, start + i]), label, texture, size)[:2] for i in range(n)]
    if not out:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool)
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
