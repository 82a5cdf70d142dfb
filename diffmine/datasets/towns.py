"""Towns: the embedded demo dataset, building facades from four fictional towns.

The problem diffmine exists for, in miniature. Each town (label) has two characteristic
element kinds of its own; every town also shows shared elements (doors, lamps, crates,
plants) drawn from one distribution that is the same for all towns, over facade walls whose
colour, texture and brightness are also drawn from one shared distribution. A model that
learns "what does the town prompt tell me" can only learn the characteristic elements, so
its typicality map should peak on them: the ground truth to check mining against.

Layout written by `generate_towns(out)`:

    out/done.json                   the parameters, written last (a complete output)
    out/train/metadata.jsonl        one row per image: file_name, label, split, elements, mask_file
    out/train/images/<town>_train_0000.png   RGB, size x size
    out/train/masks/<town>_train_0000.png    mode L: value k > 0 marks elements[k - 1]
    out/test/...                    the held-out split, same layout: never trained on

`elements` is a list of {"kind", "box": [x0, y0, x1, y1] (pixels, x1/y1 exclusive),
"label": the town for characteristic elements, null for shared ones}. Every image is seeded
from (seed, split, town, index) alone, so outputs are byte-identical for the same
parameters and any one image can be regenerated without the others.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffmine.datasets.generated import DONE_FILE, already_generated
from diffmine.core.files import output_folder

GENERATOR_VERSION = 1  # bump when rendering changes: invalidates reused outputs
SUPERSAMPLE = 4  # draw at 4x, downsample with LANCZOS: antialiased edges

# Town -> its two characteristic element kinds. Order fixes the town id used in seeds.
TOWNS: dict[str, tuple[str, str]] = {
    "ashford": ("arched_window", "striped_awning"),
    "brill": ("rose_window", "diamond_sign"),
    "corran": ("pediment", "star_ornament"),
    "dunmore": ("crenellation", "banner"),
}
# Elements every town shows with the same distribution: typical of no town.
SHARED_KINDS: tuple[str, ...] = ("door", "lamp", "crate", "plant")
SPLITS = ("train", "test")

P_CHARACTERISTIC = 0.85  # each characteristic kind is present with this probability (>= 1 per image)
N_SHARED = (1, 3)  # shared elements per image, inclusive range
ELEMENT_SIZE = (16 / 64, 26 / 64)  # an element's longer side, as a fraction of the image size

# Per kind: (width, height) relative to the element size s, and whether it stands on the ground.
_SHAPE: dict[str, tuple[float, float, bool]] = {
    "arched_window": (0.7, 1.0, False),
    "striped_awning": (1.0, 0.62, False),
    "rose_window": (0.9, 0.9, False),
    "diamond_sign": (0.85, 0.85, False),
    "pediment": (1.0, 0.68, False),
    "star_ornament": (0.85, 0.85, False),
    "crenellation": (1.0, 0.55, False),
    "banner": (0.56, 1.0, False),
    "door": (0.6, 1.0, True),
    "lamp": (0.42, 0.72, False),
    "crate": (0.62, 0.58, True),
    "plant": (0.6, 0.7, True),
}


@dataclass(frozen=True)
class TownSet:
    """Which kinds are characteristic of which label, and which are shared by all."""
    towns: dict[str, tuple[str, str]]
    shared: tuple[str, ...]


# `towns` is the demo's; `remix` is another dataset from the same renderer (benchmarks: does a
# model pretrained on towns help on data it has not seen?): new labels, and the kinds dealt out
# anew, towns' shared kinds now characteristic and half of its characteristic kinds now shared.
TOWN_SETS: dict[str, TownSet] = {
    "towns": TownSet(TOWNS, SHARED_KINDS),
    "remix": TownSet({"elmstead": ("door", "banner"), "fenwick": ("lamp", "rose_window"),
                      "garth": ("crate", "striped_awning"), "holloway": ("plant", "pediment")},
                     ("arched_window", "diamond_sign", "star_ornament", "crenellation")),
}


def characteristic_kinds(label: str) -> list[str]:
    """The element kinds typical of town `label`."""
    try:
        return list(TOWNS[label])
    except KeyError:
        raise ValueError(f"unknown town {label!r}; towns are {', '.join(TOWNS)}") from None


def kind_label(kind: str, town_set: TownSet = TOWN_SETS["towns"]) -> str | None:
    """The town a kind is characteristic of, or None for a shared kind."""
    for town, kinds in town_set.towns.items():
        if kind in kinds:
            return town
    if kind in town_set.shared:
        return None
    raise ValueError(f"unknown element kind {kind!r}")


# -- colours ------------------------------------------------------------------------------
def _jitter(rng: np.random.Generator, rgb, amount: float = 0.12, tint: float = 12.0) -> tuple[int, int, int]:
    """Moderate colour jitter: one brightness factor plus a small per-channel tint."""
    f = 1.0 + rng.uniform(-amount, amount)
    c = np.asarray(rgb, float) * f + rng.uniform(-tint, tint, 3)
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(v * f), 0, 255)) for v in rgb)


# Wall colours shared by every town (plaster, brick, stone, painted render).
_WALLS = [(196, 168, 128), (170, 92, 72), (150, 150, 146), (214, 204, 178),
          (128, 146, 162), (160, 172, 138), (186, 140, 110), (120, 110, 104)]
_SKIES = [(150, 190, 226), (182, 200, 214), (210, 190, 170), (120, 160, 205)]


# -- drawing ------------------------------------------------------------------------------
class _Painter:
    """Draws in 1x pixel coordinates onto the 4x image and onto the element's own 4x mask."""

    def __init__(self, image: Image.Image):
        self.img = ImageDraw.Draw(image)
        self.size = image.size
        self.mask_image = None
        self.msk = None

    def begin(self) -> None:
        self.mask_image = Image.new("L", self.size, 0)
        self.msk = ImageDraw.Draw(self.mask_image)

    @staticmethod
    def _xy(pts):
        return [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in pts]

    @staticmethod
    def _bb(x0, y0, x1, y1):
        return [x0 * SUPERSAMPLE, y0 * SUPERSAMPLE, x1 * SUPERSAMPLE, y1 * SUPERSAMPLE]

    def _w(self, w: float) -> int:
        return max(1, int(round(w * SUPERSAMPLE)))

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=0.0, mask=True):
        kw = dict(fill=fill, outline=outline, width=self._w(width) if outline else 0)
        self.img.rectangle(self._bb(x0, y0, x1, y1), **kw)
        if mask and self.msk is not None:
            self.msk.rectangle(self._bb(x0, y0, x1, y1), fill=255)

    def ellipse(self, x0, y0, x1, y1, fill=None, outline=None, width=0.0, mask=True):
        kw = dict(fill=fill, outline=outline, width=self._w(width) if outline else 0)
        self.img.ellipse(self._bb(x0, y0, x1, y1), **kw)
        if mask and self.msk is not None:
            self.msk.ellipse(self._bb(x0, y0, x1, y1), fill=255)

    def poly(self, pts, fill=None, outline=None, width=0.0, mask=True):
        kw = dict(fill=fill, outline=outline, width=self._w(width) if outline else 0)
        self.img.polygon(self._xy(pts), **kw)
        if mask and self.msk is not None:
            self.msk.polygon(self._xy(pts), fill=255)

    def line(self, pts, fill, width, mask=True):
        self.img.line(self._xy(pts), fill=fill, width=self._w(width))
        if mask and self.msk is not None:
            self.msk.line(self._xy(pts), fill=255, width=self._w(width))

    def pieslice(self, x0, y0, x1, y1, start, end, fill, mask=True):
        self.img.pieslice(self._bb(x0, y0, x1, y1), start, end, fill=fill)
        if mask and self.msk is not None:
            self.msk.pieslice(self._bb(x0, y0, x1, y1), start, end, fill=255)


def _draw_wall(p: _Painter, rng: np.random.Generator, size: int) -> tuple[float, float]:
    """Facade background from one distribution for every town. Returns the wall's (top, bottom)."""
    wall = _jitter(rng, _WALLS[rng.integers(len(_WALLS))], 0.15, 10)
    p.rect(0, 0, size, size, fill=wall, mask=False)
    texture = ("plain", "bricks", "planks", "stones")[rng.integers(4)]
    line = _shade(wall, rng.uniform(0.72, 0.85))
    lw = size / 64 * rng.uniform(0.35, 0.6)
    if texture == "bricks":
        bh = size * rng.uniform(0.045, 0.07)
        bw = bh * rng.uniform(2.0, 2.8)
        y, row, off = -rng.uniform(0, bh), 0, rng.uniform(0, bw)
        while y < size:
            p.line([(0, y), (size, y)], line, lw, mask=False)
            x = -off + (bw / 2 if row % 2 else 0)
            while x < size:
                p.line([(x, y), (x, y + bh)], line, lw, mask=False)
                x += bw
            y, row = y + bh, row + 1
    elif texture == "planks":
        ph = size * rng.uniform(0.05, 0.09)
        y = -rng.uniform(0, ph)
        while y < size:
            p.line([(0, y), (size, y)], line, lw * 1.3, mask=False)
            y += ph
    elif texture == "stones":
        sh = size * rng.uniform(0.09, 0.14)
        y = -rng.uniform(0, sh)
        while y < size:
            p.line([(0, y), (size, y)], line, lw, mask=False)
            x = -rng.uniform(0, sh)
            while x < size:
                p.line([(x, y), (x, y + sh)], line, lw, mask=False)
                x += sh * rng.uniform(1.0, 1.8)
            y += sh
    # Broad, soft light variation: a few large translucent-looking bands.
    for _ in range(rng.integers(0, 3)):
        x = rng.uniform(-0.2, 1.0) * size
        w = rng.uniform(0.1, 0.35) * size
        p.rect(x, 0, x + w, size, fill=_shade(wall, rng.uniform(0.92, 1.06)), mask=False)
    top = 0.0
    if rng.random() < 0.6:  # sky and a cornice above the facade
        top = size * rng.uniform(0.04, 0.12)
        p.rect(0, 0, size, top, fill=_jitter(rng, _SKIES[rng.integers(len(_SKIES))], 0.08, 8), mask=False)
        p.rect(0, top, size, top + size * 0.03, fill=_shade(wall, 0.7), mask=False)
        top += size * 0.03
    bottom = float(size)
    if rng.random() < 0.7:  # pavement
        bottom = size * (1 - rng.uniform(0.03, 0.09))
        p.rect(0, bottom, size, size, fill=_jitter(rng, (96, 94, 92), 0.15, 6), mask=False)
    return top, bottom


# Each painter draws one element filling (x0, y0)-(x1, y1), colours jittered by rng.
def _arched_window(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    frame = _jitter(rng, (238, 232, 214), 0.06, 6)
    glass = _jitter(rng, (40, 70, 140), 0.15, 10)
    p.rect(x0, y0 + w / 2, x1, y1, fill=frame)
    p.pieslice(x0, y0, x1, y0 + w, 180, 360, fill=frame)
    t = w * 0.16
    iw = w - 2 * t
    p.rect(x0 + t, y0 + w / 2, x1 - t, y1 - t, fill=glass, mask=False)
    p.pieslice(x0 + t, y0 + t, x1 - t, y0 + t + iw, 180, 360, fill=glass, mask=False)
    cx = (x0 + x1) / 2
    p.line([(cx, y0 + t), (cx, y1 - t)], frame, w * 0.09, mask=False)
    p.line([(x0 + t, y0 + w / 2 + h * 0.2), (x1 - t, y0 + w / 2 + h * 0.2)], frame, w * 0.09, mask=False)


def _striped_awning(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    red = _jitter(rng, (200, 40, 44), 0.12, 10)
    white = _jitter(rng, (244, 240, 232), 0.04, 5)
    n = 6
    sw = w / n
    body = y0 + h * 0.72
    inset = w * 0.08
    for i in range(n):  # slanted stripes of a trapezoid, narrower at the wall
        a, b = x0 + inset + (w - 2 * inset) * i / n, x0 + inset + (w - 2 * inset) * (i + 1) / n
        c, d = x0 + sw * i, x0 + sw * (i + 1)
        col = red if i % 2 == 0 else white
        p.poly([(a, y0), (b, y0), (d, body), (c, body)], fill=col)
        p.pieslice(c, body - h * 0.28, d, y1, 0, 180, fill=col)  # scalloped valance


def _rose_window(p, rng, x0, y0, x1, y1):
    w = x1 - x0
    stone = _jitter(rng, (226, 222, 210), 0.06, 6)
    glass = _jitter(rng, (120, 40, 130), 0.15, 12)
    p.ellipse(x0, y0, x1, y1, fill=stone)
    t = w * 0.13
    p.ellipse(x0 + t, y0 + t, x1 - t, y1 - t, fill=glass, mask=False)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, w / 2 - t
    for k in range(8):
        a = k * math.pi / 4
        p.line([(cx, cy), (cx + r * math.cos(a), cy + r * math.sin(a))], stone, w * 0.06, mask=False)
    c = w * 0.12
    p.ellipse(cx - c, cy - c, cx + c, cy + c, fill=_jitter(rng, (240, 200, 60), 0.08, 8), mask=False)


def _diamond_sign(p, rng, x0, y0, x1, y1):
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    black = _jitter(rng, (30, 28, 26), 0.1, 4)
    yellow = _jitter(rng, (246, 200, 30), 0.08, 10)
    p.poly([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=black)
    t = 0.2
    p.poly([(cx, y0 + h * t), (x1 - w * t, cy), (cx, y1 - h * t), (x0 + w * t, cy)], fill=yellow, mask=False)
    d = w * 0.08
    p.ellipse(cx - d, cy - d, cx + d, cy + d, fill=black, mask=False)


def _pediment(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    white = _jitter(rng, (242, 240, 232), 0.05, 5)
    inner = _jitter(rng, (70, 120, 110), 0.15, 10)
    cx = (x0 + x1) / 2
    base = y1 - h * 0.2
    edge = _shade(white, 0.55)
    p.poly([(x0, base), (cx, y0), (x1, base)], fill=edge)
    p.rect(x0, base, x1, y1, fill=edge)
    e = h * 0.07
    p.poly([(x0 + 2 * e, base - e * 0.5), (cx, y0 + 1.6 * e), (x1 - 2 * e, base - e * 0.5)], fill=white, mask=False)
    p.rect(x0 + e, base + e * 0.5, x1 - e, y1 - e, fill=white, mask=False)
    t = 0.25
    p.poly([(x0 + w * t, base - h * 0.12), (cx, y0 + h * 0.3), (x1 - w * t, base - h * 0.12)], fill=inner, mask=False)


def _star_ornament(p, rng, x0, y0, x1, y1):
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    gold = _jitter(rng, (236, 180, 30), 0.1, 10)
    rot = rng.uniform(-0.25, 0.25)
    pts = []
    for k in range(10):
        a = -math.pi / 2 + rot + k * math.pi / 5
        rr = r * (0.97 if k % 2 == 0 else 0.42)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    p.poly(pts, fill=_shade(gold, 0.45))
    inner = [(cx + (x - cx) * 0.72, cy + (y - cy) * 0.72) for x, y in pts]
    p.poly(inner, fill=gold, mask=False)


def _crenellation(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    stone = _jitter(rng, (84, 84, 92), 0.15, 6)
    dark = _shade(stone, 0.55)
    top = y0 + h * 0.45
    p.rect(x0, top, x1, y1, fill=stone)
    n = 4
    mw = w / (2 * n - 1)
    for i in range(n):
        p.rect(x0 + 2 * i * mw, y0, x0 + (2 * i + 1) * mw, top + 1e-3, fill=stone)
    p.line([(x0, top + (y1 - top) * 0.5), (x1, top + (y1 - top) * 0.5)], dark, h * 0.07, mask=False)
    p.line([(x0, y1 - h * 0.04), (x1, y1 - h * 0.04)], dark, h * 0.08, mask=False)


def _banner(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    green = _jitter(rng, (30, 140, 60), 0.15, 10)
    yellow = _jitter(rng, (240, 220, 90), 0.08, 8)
    rod = _jitter(rng, (60, 40, 30), 0.1, 5)
    p.rect(x0, y0, x1, y0 + h * 0.07, fill=rod)
    top = y0 + h * 0.07
    p.poly([(x0 + w * 0.1, top), (x1 - w * 0.1, top), (x1 - w * 0.1, y1), ((x0 + x1) / 2, y1 - h * 0.2),
            (x0 + w * 0.1, y1)], fill=green)
    cx = (x0 + x1) / 2
    p.poly([(cx - w * 0.1, top), (cx + w * 0.1, top), (cx + w * 0.1, y1 - h * 0.26), (cx - w * 0.1, y1 - h * 0.26)],
           fill=yellow, mask=False)


def _door(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    wood = _jitter(rng, [(110, 70, 40), (70, 50, 36), (90, 40, 36), (50, 70, 60)][rng.integers(4)], 0.15, 8)
    frame = _shade(wood, 0.6)
    p.rect(x0, y0, x1, y1, fill=frame)
    t = w * 0.1
    p.rect(x0 + t, y0 + t, x1 - t, y1, fill=wood, mask=False)
    for py0, py1 in ((0.14, 0.46), (0.54, 0.9)):
        p.rect(x0 + 2 * t, y0 + h * py0, x1 - 2 * t, y0 + h * py1, outline=frame, width=w * 0.05, mask=False)
    k = w * 0.06
    p.ellipse(x1 - 2.6 * t - k, y0 + h * 0.5 - k, x1 - 2.6 * t + k, y0 + h * 0.5 + k,
              fill=_jitter(rng, (210, 180, 90), 0.08, 6), mask=False)


def _lamp(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    iron = _jitter(rng, (36, 36, 40), 0.15, 4)
    glow = _jitter(rng, (252, 236, 160), 0.04, 6)
    cx = (x0 + x1) / 2
    p.line([(cx, y0 + h * 0.04), (cx, y0 + h * 0.22)], iron, w * 0.14)
    p.poly([(cx - w * 0.15, y0 + h * 0.16), (cx + w * 0.15, y0 + h * 0.16), (x1, y0 + h * 0.32),
            (x0, y0 + h * 0.32)], fill=iron)
    p.rect(x0 + w * 0.14, y0 + h * 0.32, x1 - w * 0.14, y0 + h * 0.8, fill=glow, outline=iron, width=w * 0.09)
    p.rect(x0 + w * 0.06, y0 + h * 0.8, x1 - w * 0.06, y0 + h * 0.88, fill=iron)
    p.line([(cx, y0 + h * 0.88), (cx, y1)], iron, w * 0.12)


def _crate(p, rng, x0, y0, x1, y1):
    w = x1 - x0
    wood = _jitter(rng, (180, 140, 86), 0.15, 10)
    dark = _shade(wood, 0.62)
    p.rect(x0, y0, x1, y1, fill=dark)
    t = w * 0.1
    p.rect(x0 + t, y0 + t, x1 - t, y1 - t, fill=wood, mask=False)
    p.line([(x0 + t, y0 + t), (x1 - t, y1 - t)], dark, w * 0.09, mask=False)
    p.line([(x0 + t, y1 - t), (x1 - t, y0 + t)], dark, w * 0.09, mask=False)


def _plant(p, rng, x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    pot = _jitter(rng, (178, 92, 56), 0.12, 8)
    leaf = _jitter(rng, (62, 120, 50), 0.18, 10)
    p.poly([(x0 + w * 0.18, y0 + h * 0.58), (x1 - w * 0.18, y0 + h * 0.58), (x1 - w * 0.28, y1),
            (x0 + w * 0.28, y1)], fill=pot)
    for bx0, by0, bx1, by1 in ((0.0, 0.22, 0.55, 0.66), (0.45, 0.22, 1.0, 0.66), (0.2, 0.0, 0.8, 0.5)):
        p.ellipse(x0 + w * bx0, y0 + h * by0, x0 + w * bx1, y0 + h * by1, fill=_shade(leaf, rng.uniform(0.85, 1.1)))


_DRAW = {
    "arched_window": _arched_window, "striped_awning": _striped_awning,
    "rose_window": _rose_window, "diamond_sign": _diamond_sign,
    "pediment": _pediment, "star_ornament": _star_ornament,
    "crenellation": _crenellation, "banner": _banner,
    "door": _door, "lamp": _lamp, "crate": _crate, "plant": _plant,
}
assert set(_DRAW) == set(_SHAPE) == {k for ks in TOWNS.values() for k in ks} | set(SHARED_KINDS)


# -- one image ----------------------------------------------------------------------------
@dataclass
class _Slot:
    kind: str
    x0: float
    y0: float
    x1: float
    y1: float


def _overlaps(a: _Slot, b: _Slot) -> bool:  # touching is fine
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _choose_kinds(rng: np.random.Generator, town: str, town_set: TownSet) -> list[str]:
    a, b = town_set.towns[town]
    u = rng.random()
    # P(a) = P(b) = P_CHARACTERISTIC, at least one of them: both with 2p - 1, each alone with 1 - p.
    q = 1.0 - P_CHARACTERISTIC
    chosen = [a] if u < q else [b] if u < 2 * q else [a, b]
    n = int(rng.integers(N_SHARED[0], N_SHARED[1] + 1))
    shared = [town_set.shared[i] for i in rng.permutation(len(town_set.shared))[:n]]
    return chosen + shared


def _layout(rng: np.random.Generator, kinds: list[str], size: int, top: float, bottom: float) -> list[_Slot]:
    """Place the kinds without overlaps by rejection sampling; restart, then shrink, when stuck."""
    margin = size * 0.02
    shrink = 1.0
    for attempt in range(200):
        if attempt and attempt % 20 == 0:
            shrink *= 0.93
        slots: list[_Slot] = []
        for kind in kinds:
            rw, rh, grounded = _SHAPE[kind]
            s = rng.uniform(*ELEMENT_SIZE) * size * shrink
            w, h = rw * s, rh * s
            for _ in range(30):
                x0 = rng.uniform(margin, size - margin - w)
                y0 = bottom - h if grounded else rng.uniform(top + margin, bottom - margin - h)
                slot = _Slot(kind, x0, y0, x0 + w, y0 + h)
                if not any(_overlaps(slot, o) for o in slots):
                    slots.append(slot)
                    break
            else:
                break
        if len(slots) == len(kinds):
            return slots
    raise RuntimeError(f"could not place {kinds} in a {size} px image")  # pragma: no cover


def render_facade(rng: np.random.Generator, town: str, size: int = 64,
                  town_set: TownSet = TOWN_SETS["towns"]) -> tuple[Image.Image, Image.Image, list[dict]]:
    """One facade of `town`: (RGB image, L mask with value k on elements[k-1], elements)."""
    big = Image.new("RGB", (size * SUPERSAMPLE,) * 2)
    painter = _Painter(big)
    top, bottom = _draw_wall(painter, rng, size)
    kinds = _choose_kinds(rng, town, town_set)
    slots = _layout(rng, kinds, size, top, bottom)
    mask4 = np.zeros((size * SUPERSAMPLE,) * 2, np.uint8)
    elements = []
    for k, slot in enumerate(slots, start=1):
        painter.begin()
        _DRAW[slot.kind](painter, rng, slot.x0, slot.y0, slot.x1, slot.y1)
        own = np.asarray(painter.mask_image) > 0
        mask4[own] = k  # later elements overwrite earlier ones
        ys, xs = np.nonzero(own)
        box = [int(xs.min()) // SUPERSAMPLE, int(ys.min()) // SUPERSAMPLE,
               -(-(int(xs.max()) + 1) // SUPERSAMPLE), -(-(int(ys.max()) + 1) // SUPERSAMPLE)]
        elements.append({"kind": slot.kind, "box": box, "label": kind_label(slot.kind, town_set)})
    image = big.resize((size, size), Image.LANCZOS)
    # Faint sensor-like noise so flat areas are not perfectly flat.
    arr = np.asarray(image, np.float32) + rng.normal(0.0, 2.0, (size, size, 3))
    image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    c = SUPERSAMPLE // 2  # mask: the value at each output pixel's centre sample
    mask = Image.fromarray(np.ascontiguousarray(mask4[c::SUPERSAMPLE, c::SUPERSAMPLE]), "L")
    return image, mask, elements


# -- the dataset --------------------------------------------------------------------------
def _params(n_train: int, n_test: int, size: int, seed: int, variant: str = "towns") -> dict:
    town_set = TOWN_SETS[variant]
    params = {"generator": "diffmine.towns", "version": GENERATOR_VERSION,
              "towns": {t: list(k) for t, k in town_set.towns.items()},
              "n_train": n_train, "n_test": n_test, "size": size, "seed": seed}
    if variant != "towns":  # the demo's parameters stay as they were: its outputs are reused
        params.update(variant=variant, shared=list(town_set.shared))
    return params


def _write_split(folder: Path, split: str, n: int, size: int, seed: int, progress: bool,
                 variant: str = "towns") -> None:
    from tqdm.auto import tqdm

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    split_id = SPLITS.index(split)
    rows = []
    town_set = TOWN_SETS[variant]
    jobs = [(t, town, i) for t, town in enumerate(town_set.towns) for i in range(n)]
    for town_id, town, i in tqdm(jobs, desc=f"{variant} {split}", disable=not progress):
        rng = np.random.default_rng([seed, split_id, town_id, i])
        image, mask, elements = render_facade(rng, town, size, town_set)
        name = f"{town}_{split}_{i:04d}.png"
        image.save(folder / "images" / name)
        mask.save(folder / "masks" / name)
        rows.append({"file_name": f"images/{name}", "label": town, "split": split,
                     "elements": elements, "mask_file": f"masks/{name}"})
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def generate_towns(out: str | Path, n_train: int = 200, n_test: int = 40, size: int = 64, seed: int = 0,
                   progress: bool = False, variant: str = "towns") -> Path:
    """Write the towns dataset to `out` (train/ and test/ data folders) and return `out`.

    `variant` picks the labels and their kinds (TOWN_SETS): "towns" (the demo's) or "remix".
    n_train / n_test are images per town. An existing complete output with the same
    parameters is reused as is; one with other parameters is replaced. The output is built in
    a temporary sibling folder and renamed into place, so `out` is never half-written.
    """
    out = Path(out)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1 (images per town), got {n_train}, {n_test}")
    if not 32 <= size <= 512:
        raise ValueError(f"size must be in [32, 512] px, got {size}")
    if variant not in TOWN_SETS:
        raise ValueError(f"unknown variant {variant!r}; variants are {', '.join(TOWN_SETS)}")
    params = _params(n_train, n_test, size, seed, variant)
    if already_generated(out, params, "towns"):
        return out
    with output_folder(out, owned=None) as tmp:  # a generated dataset: replaced whole
        for split, n in zip(SPLITS, (n_train, n_test)):
            _write_split(tmp / split, split, n, size, seed, progress, variant)
        (tmp / DONE_FILE).write_text(json.dumps(params, indent=2) + "\n")
    return out


def contact_sheet(folder: str | Path, path: str | Path, n_per_label: int = 8, scale: int = 2,
                  boxes: bool = False) -> Path:
    """A PNG grid for a person to look at: one row per town, the first n_per_label images.

    `folder` is a data folder (with metadata.jsonl) or a generate_towns output (its train/ is
    shown). With `boxes`, ground-truth boxes are outlined: characteristic red, shared cyan.
    """
    folder = Path(folder)
    if not (folder / "metadata.jsonl").is_file() and (folder / "train" / "metadata.jsonl").is_file():
        folder = folder / "train"
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    labels = [t for t in TOWNS if t in by_label] + sorted(set(by_label) - set(TOWNS))
    with Image.open(folder / rows[0]["file_name"]) as first:
        cell = first.size[0] * scale
    pad, label_w = 4, 70
    sheet = Image.new("RGB", (label_w + n_per_label * (cell + pad) + pad, len(labels) * (cell + pad) + pad),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, label in enumerate(labels):
        y = pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 12), label, fill=(0, 0, 0))
        kinds = TOWNS.get(label)
        if kinds:
            draw.text((pad, y + cell // 2), "\n".join(k.replace("_", " ") for k in kinds), fill=(90, 90, 90))
        for c, row in enumerate(by_label[label][:n_per_label]):
            with Image.open(folder / row["file_name"]) as im:
                tile = im.convert("RGB").resize((cell, cell), Image.NEAREST)
            if boxes:
                d = ImageDraw.Draw(tile)
                for e in row["elements"]:
                    x0, y0, x1, y1 = (v * scale for v in e["box"])
                    d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0) if e["label"] else (0, 255, 255))
            sheet.paste(tile, (label_w + pad + c * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
