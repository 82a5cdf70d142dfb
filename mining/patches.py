"""Patch typicality and greedy non-overlapping patch selection (docs/method.md §3).

A patch is a k x k square; its typicality is the mean of the pixel map over it. All k x k
windows at stride 1 are scored at once with a summed-area table (a box filter: O(H W) per
map whatever k is, float64 so that the differences of large sums stay exact). Selection is
greedy per image -- take the best window, reject every window that touches or overlaps it,
repeat -- run as at most `per_image` arg-max steps over a masked score tensor, batched over
images: no Python loop over pixels, windows or images.

Boxes are pixel boxes (x0, y0, x1, y1) with x1/y1 exclusive, at the processing resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from mining.config import PER_IMAGE, PER_LABEL, PUBLISHED_PATCH



def default_patch_size(resolution: int) -> int:
    """The published patch size, interpolated between the published points, proportional outside.

    50 px at 256 and 64 px at 512 (docs/method.md §3); below 256 it scales with the resolution
    (6 px at 32), between 256 and 512 linearly, above 512 proportionally from 64 at 512.
    """
    (r0, k0), (r1, k1) = PUBLISHED_PATCH
    if resolution <= r0:
        k = k0 * resolution / r0
    elif resolution <= r1:
        k = k0 + (k1 - k0) * (resolution - r0) / (r1 - r0)
    else:
        k = k1 * resolution / r1
    return max(1, min(int(round(k)), resolution))


def _as_tensor(maps) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"typicality maps must be (H, W) or (N, H, W), got shape {tuple(t.shape)}")
    return t


def patch_scores(maps, k: int) -> torch.Tensor:
    """Mean of each map over every k x k window at stride 1.

    maps: (N, H, W) or (H, W) array/tensor -> (N, H-k+1, W-k+1) float32 tensor; entry [n, y, x]
    is the mean of maps[n, y:y+k, x:x+k].
    """
    t = _as_tensor(maps)
    n, h, w = t.shape
    if not 1 <= k <= min(h, w):
        raise ValueError(f"patch size {k} must be between 1 and the map size {min(h, w)}")
    s = torch.zeros((n, h + 1, w + 1), dtype=torch.float64)
    s[:, 1:, 1:] = t.to(torch.float64).cumsum(1).cumsum(2)
    box = s[:, k:, k:] - s[:, :-k, k:] - s[:, k:, :-k] + s[:, :-k, :-k]
    return (box / (k * k)).to(torch.float32)


def greedy_select(scores: torch.Tensor, k: int, per_image: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy non-overlapping maxima of a window-score tensor, batched over images.

    scores: (N, h, w) window scores (top-left corners). Two k x k windows at (y, x) and
    (y', x') touch or overlap iff |y - y'| <= k and |x - x'| <= k, so after each pick that
    square neighbourhood of corners is masked out. Returns (ys, xs, values), each (N, per_image);
    slots an image cannot fill (no window left) have value NaN and coordinates -1.
    NaN scores are never picked.
    """
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    n, h, w = scores.shape
    work = scores.to(torch.float32).clone()
    work[torch.isnan(work)] = -torch.inf
    flat = work.view(n, -1)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    ys = torch.full((n, per_image), -1, dtype=torch.long)
    xs = torch.full((n, per_image), -1, dtype=torch.long)
    vals = torch.full((n, per_image), float("nan"))
    for j in range(per_image):  # at most per_image steps; everything inside is vectorised
        v, idx = flat.max(dim=1)
        ok = torch.isfinite(v)
        if not ok.any():
            break
        y, x = idx // w, idx % w
        ys[ok, j], xs[ok, j], vals[ok, j] = y[ok], x[ok], v[ok]
        near = ((rows - y.view(n, 1, 1)).abs() <= k) & ((cols - x.view(n, 1, 1)).abs() <= k) & ok.view(n, 1, 1)
        work.masked_fill_(near, -torch.inf)
    return ys, xs, vals


@dataclass
class Patches:
    """A flat table of patches: one row per patch."""

    image: np.ndarray  # (M,) int, index of the map / image the patch comes from
    box: np.ndarray  # (M, 4) int, (x0, y0, x1, y1), x1/y1 exclusive
    score: np.ndarray  # (M,) float32, the patch typicality (mean of the map over the box)

    def __len__(self) -> int:
        return len(self.image)

    def take(self, idx) -> "Patches":
        idx = np.asarray(idx, dtype=np.int64)
        return Patches(self.image[idx], self.box[idx], self.score[idx])

    @staticmethod
    def concat(parts: Iterable["Patches"]) -> "Patches":
        parts = list(parts)
        if not parts:
            return Patches.empty()
        return Patches(np.concatenate([p.image for p in parts]), np.concatenate([p.box for p in parts]),
                       np.concatenate([p.score for p in parts]))

    @staticmethod
    def empty() -> "Patches":
        return Patches(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.float32))


def _to_patches(ys, xs, vals, k: int, offset: int, true_vals=None) -> Patches:
    ok = ~torch.isnan(vals)
    img = torch.arange(ys.shape[0]).view(-1, 1).expand_as(ys)[ok] + offset
    y, x = ys[ok], xs[ok]
    box = torch.stack([x, y, x + k, y + k], dim=1)
    score = (true_vals if true_vals is not None else vals)[ok]
    return Patches(img.numpy().astype(np.int64), box.numpy().astype(np.int64), score.numpy().astype(np.float32))


def top_patches(maps, k: int, per_image: int = PER_IMAGE, mode: str = "top",
                generator: torch.Generator | None = None, offset: int = 0) -> Patches:
    """The `per_image` best non-overlapping k x k patches of each map (docs/method.md §3: 5 per image).

    mode "top": most typical first; "bottom": least typical (a baseline); "random": random
    non-overlapping patches drawn with `generator` (a baseline). Scores are always the patch
    typicality. `offset` is added to image indices (for maps processed in chunks).
    Rows come image by image, best first within an image.
    """
    return select_patches(patch_scores(maps, k), k, per_image, mode, generator, offset)


def select_patches(scores: torch.Tensor, k: int, per_image: int = PER_IMAGE, mode: str = "top",
                   generator: torch.Generator | None = None, offset: int = 0) -> Patches:
    """`top_patches` on window scores already computed by `patch_scores` (score once, select thrice)."""
    if mode == "top":
        key = scores
    elif mode == "bottom":
        key = -scores
    elif mode == "random":
        key = torch.rand(scores.shape, generator=generator)
        key[torch.isnan(scores)] = torch.nan
    else:
        raise ValueError(f"mode must be 'top', 'bottom' or 'random', got {mode!r}")
    ys, xs, vals = greedy_select(key, k, per_image)
    if mode == "top":
        return _to_patches(ys, xs, vals, k, offset)
    n = scores.shape[0]
    true = torch.where(torch.isnan(vals), vals,
                       scores.reshape(n, -1).gather(1, (ys.clamp(min=0) * scores.shape[2] + xs.clamp(min=0))))
    return _to_patches(ys, xs, vals, k, offset, true_vals=true)


def top_per_label(patches: Patches, per_label: int = PER_LABEL) -> Patches:
    """The `per_label` most typical patches across images (docs/method.md §3: 1000), best first.

    Ties are broken by image index then position, so the order is deterministic.
    """
    return patches.take(top_per_label_index(patches, per_label))


def top_per_label_index(patches: Patches, per_label: int = PER_LABEL) -> np.ndarray:
    """Row indices of `top_per_label`, best first."""
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    order = np.lexsort((patches.box[:, 0], patches.box[:, 1], patches.image, -patches.score.astype(np.float64)))
    return order[:per_label]


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) x (P, 4) boxes -> (M, P) bool: the boxes share or touch a pixel edge/corner."""
    a = np.asarray(a)[:, None, :]
    b = np.asarray(b)[None, :, :]
    return (a[..., 0] <= b[..., 2]) & (b[..., 0] <= a[..., 2]) & (a[..., 1] <= b[..., 3]) & (b[..., 1] <= a[..., 3])
