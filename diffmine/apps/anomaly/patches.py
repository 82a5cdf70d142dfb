"""The `patches` score's parts: tiles at the model's resolution, stitched maps, a patch memory bank.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022; as
anomalib implements it): patch features of the normal images in a memory bank, subsampled by
greedy k-center coreset selection; a test patch scores its distance to the nearest normal patch.
Here the patch features are per-latent-cell features (the VAE encoder's, DIFT's or denoising errors,
detector.py) of tiles cut from the image at its own resolution, so a small defect keeps its size in
pixels instead of being shrunk away.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CANDIDATES_PER_CENTRE = 4  # greedy coreset: picked from at most this many random candidates per centre
PROJECTED_DIM = 128  # greedy coreset: wider features are compared through a random projection to this many
OWN_NEIGHBOURS = 16  # leave-one-out search: neighbours looked at before falling back to a filtered search
# HNSW graph (bank_search="hnsw"); PatchCore's own code offers approximate FAISS search too. On the 262,144
# val patches of 256 px weaves (vae+pixels, 16,384 bank patches of 256 dims), efSearch 128 found the exact
# nearest for 99.995 % of them and 99.5 % of the top 1 %, 3.4x faster than the exact scan on 2 threads
# (benchmarks/bank_search.py).
HNSW_NEIGHBOURS = 32  # links per node (faiss's M)
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# a training image's leave-one-out score (fit): every patch screened at this efSearch, its top-k again at
# HNSW_EF_SEARCH (MemoryBank.distances' `top`); 32 found the exact nearest for 96.5 % of the top 1 %
HNSW_EF_SCREEN = 32


def tile_offsets(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering [0, length): every `stride`, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tiled_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """The size an image is tiled at: itself, or scaled up so its short side is one tile."""
    short = min(height, width)
    if short >= tile:
        return height, width
    return max(tile, round(height * tile / short)), max(tile, round(width * tile / short))


def tile_boxes(height: int, width: int, tile: int, stride: int) -> np.ndarray:
    """(n, 4) tiles (x0, y0, x1, y1) of an image of that size, at `tiled_size`, row by row."""
    h, w = tiled_size(height, width, tile)
    return np.array([(x, y, x + tile, y + tile) for y in tile_offsets(h, tile, stride)
                     for x in tile_offsets(w, tile, stride)], dtype=np.int64)


def cut_tiles(image: Image.Image, tile: int, stride: int) -> np.ndarray:
    """(n, 3, tile, tile) float32 in [-1, 1] (the VAE's range): the tiles of one RGB image."""
    w, h = image.size
    th, tw = tiled_size(h, w, tile)
    if (th, tw) != (h, w):
        image = image.resize((tw, th), Image.BICUBIC)
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.stack([a[y0:y1, x0:x1].transpose(2, 0, 1) for x0, y0, x1, y1 in tile_boxes(h, w, tile, stride)])


def stitch(tile_maps: torch.Tensor, boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """One (H, W) map from per-tile maps (n, h, w): each upsampled to its tile, averaged where tiles overlap.

    `size` is the original image's (H, W); an image tiled at a larger `tiled_size` is resized back.
    """
    if len(tile_maps) != len(boxes):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(boxes)} tiles")
    tile = int(boxes[0, 2] - boxes[0, 0])
    th, tw = tiled_size(size[0], size[1], tile)
    up = F.interpolate(tile_maps[:, None].float(), size=(tile, tile), mode="bilinear", align_corners=False)[:, 0]
    total = torch.zeros(th, tw)
    count = torch.zeros(th, tw)
    for m, (x0, y0, x1, y1) in zip(up, boxes):
        total[y0:y1, x0:x1] += m
        count[y0:y1, x0:x1] += 1
    out = total / count
    if (th, tw) != tuple(size):
        out = F.interpolate(out[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return out


def patch_vectors(fmaps: torch.Tensor, pool: int = 3, normalize: bool = True) -> torch.Tensor:
    """(n, C, h, w) feature maps -> (n, h, w, C) patch features: each cell averaged over its pool x pool
    neighbourhood (PatchCore's local aggregation, 3; 1 keeps the cell itself), L2-normalised (normalize)."""
    x = fmaps.float()
    if pool > 1:
        x = F.avg_pool2d(x, kernel_size=pool, stride=1, padding=pool // 2, count_include_pad=False)
    if normalize:
        x = F.normalize(x, dim=1)
    return x.permute(0, 2, 3, 1).contiguous()


def joint_vectors(learned: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(n, h, w, C1 + C2): learned features beside pixel patches scaled to their root mean square, as
    PatchCore sets two feature depths side by side: the learned half keeps what a patch looks like, the
    pixel half the high frequencies and brightness a learned encoder trained on other images may drop.
    `half_scales` then puts both halves in units of their own normal variation."""
    if learned.shape[:3] != pixels.shape[:3]:
        raise ValueError(f"learned features on a {tuple(learned.shape[1:3])} grid, pixel patches on "
                         f"{tuple(pixels.shape[1:3])}: they must describe the same cells")
    return torch.cat([learned, pixels / math.sqrt(pixels.shape[-1])], dim=-1)


def half_scales(pool: torch.Tensor, owner: np.ndarray, width: int, seed: int = 0, sample: int = 4096) -> np.ndarray:
    """(C,) divisors of joint vectors (rows of `pool`, the first `width` columns the learned half): each
    half's median distance from a normal patch to its nearest patch of another normal image, so that
    either half's typical normal distance is 1 and a change in one is not drowned by the other's spread.
    Patches of the even-numbered images (a random `sample`) are searched among those of the odd ones."""
    import faiss

    scales = np.ones(pool.shape[1], dtype=np.float32)
    images = np.unique(owner)
    if len(images) < 2:  # one image: nothing to compare with
        return scales
    g = np.random.default_rng(seed)
    query, base = (np.flatnonzero(np.isin(owner, images[k::2])) for k in (0, 1))
    query = g.choice(query, size=min(sample, len(query)), replace=False)
    base = g.choice(base, size=min(8 * sample, len(base)), replace=False)
    rows = [pool[torch.from_numpy(np.sort(i))].float().numpy() for i in (query, base)]  # once, both halves
    for cols in (slice(0, width), slice(width, None)):
        q, b = (np.ascontiguousarray(r[:, cols]) for r in rows)
        index = faiss.IndexFlatL2(q.shape[1])
        index.add(b)
        median = float(np.median(np.sqrt(np.maximum(index.search(q, 1)[0][:, 0], 0))))
        scales[cols] = median if median > 0 else 1.0
    return scales


def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k rows of x chosen by greedy k-center (each next row the farthest from those chosen).

    PatchCore's coreset subsampling; the candidates are first cut to a random
    CANDIDATES_PER_CENTRE x k rows, so the cost is O(k^2), not O(k x rows). Rows wider than
    PROJECTED_DIM (pixel patches) are compared after a Gaussian random projection (Johnson-Lindenstrauss),
    as PatchCore does, so the cost does not grow with the width.
    """
    g = np.random.default_rng(seed)
    n = len(x)
    if k >= n:
        return np.arange(n)
    cand = np.sort(g.choice(n, size=min(n, CANDIDATES_PER_CENTRE * k), replace=False))
    xc = x[torch.from_numpy(cand)].float()
    if xc.shape[1] > PROJECTED_DIM:
        proj = torch.from_numpy(g.normal(size=(xc.shape[1], PROJECTED_DIM)).astype(np.float32))
        xc = xc @ proj / math.sqrt(PROJECTED_DIM)
    sq = xc.square().sum(dim=1)

    def dist2(j: int) -> torch.Tensor:  # |a - b|^2 = |a|^2 - 2 a.b + |b|^2: one matrix-vector product a centre
        return (sq - 2 * (xc @ xc[j]) + sq[j]).clamp_min_(0)

    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = int(g.integers(len(xc)))
    nearest = dist2(chosen[0])
    for i in range(1, k):
        chosen[i] = int(nearest.argmax())
        torch.minimum(nearest, dist2(chosen[i]), out=nearest)
    return np.sort(cand[chosen])


def random_subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


class MemoryBank:
    """Normal patch features in a FAISS L2 index; `owner` = the normal image each came from.

    search (config.BANK_SEARCHES): "hnsw", an HNSW graph (a found neighbour is never nearer than the
    true nearest, rarely farther), or "exact", the flat scan. The graph is built on one thread, so it
    is the same every time."""

    def __init__(self, features: np.ndarray, owner: np.ndarray, search: str):
        import faiss  # the anomaly extra's nearest-neighbour search

        order = np.argsort(owner, kind="stable")  # by owner: an image's patches are one id range
        self.features = np.ascontiguousarray(features[order], dtype=np.float32)
        self.owner = np.asarray(owner)[order]
        self.search = search
        dim = self.features.shape[1]
        if search == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            # one thread: a multi-threaded build links nodes in a varying order. FAISS and torch share one
            # OpenMP runtime, so the process's thread count is put back as it was right after.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                self.index.add(self.features)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            self.index = faiss.IndexFlatL2(dim)
            self.index.add(self.features)

    def distances(self, x: np.ndarray, exclude_owner: int | None = None, top: int | None = None,
                  ef: int = HNSW_EF_SEARCH) -> np.ndarray:
        """Euclidean distance of each row of x to its nearest bank patch (not one of `exclude_owner`'s).

        top=k (a graph only): every row is first screened by a cheap walk (HNSW_EF_SCREEN); only the
        rows that could be among the k largest are searched again as usual (a walk finds a patch at
        the nearest's distance or farther, so a row screened below the k-th largest stays below it).
        The k largest are then as without `top`, the other rows upper bounds: for image scores only.
        ef: the graph's efSearch (benchmarks/bank_search.py compares them)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if top is None or self.search != "hnsw":
            return np.sqrt(np.maximum(self._nearest(x, exclude_owner, ef), 0)).astype(np.float64)
        d = self._nearest(x, exclude_owner, HNSW_EF_SCREEN)
        done = np.zeros(len(x), dtype=bool)
        k = min(int(top), len(x))
        while True:
            todo = ~done & (d >= np.partition(d, len(d) - k)[len(d) - k])
            if not todo.any():
                return np.sqrt(np.maximum(d, 0)).astype(np.float64)
            d[todo] = np.minimum(d[todo], self._nearest(np.ascontiguousarray(x[todo]), exclude_owner, ef))
            done |= todo

    def _nearest(self, x: np.ndarray, exclude_owner: int | None, ef: int) -> np.ndarray:
        """Squared distances of rows x to their nearest bank patch not `exclude_owner`'s (graph: efSearch ef)."""
        params = self._params(ef)
        if exclude_owner is None:
            return self.index.search(x, 1, params=params)[0][:, 0]
        lo, hi = (int(v) for v in np.searchsorted(self.owner, [exclude_owner, exclude_owner + 1]))
        if hi - lo == len(self.owner):  # the only image: nothing else to compare with
            return np.zeros(len(x), dtype=np.float32)
        # The nearest of a few neighbours found by the fast search that is another image's; only
        # rows whose every one is the image's own are searched again with a selector (slow).
        k = min(OWN_NEIGHBOURS, len(self.owner))
        dk, ik = self.index.search(x, k, params=params)
        other = ((ik < lo) | (ik >= hi)) & (ik >= 0)  # -1: fewer than k found (a small graph)
        found = other.any(axis=1)
        d = dk[np.arange(len(x)), other.argmax(axis=1)]
        if not found.all():
            d[~found] = self._nearest_outside(np.ascontiguousarray(x[~found]), lo, hi, ef)
        return d

    def _params(self, ef: int, sel=None):
        """FAISS search parameters: the graph's efSearch, and the ids a search may return (`sel`)."""
        import faiss

        only = {} if sel is None else {"sel": sel}
        if self.search == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=ef, **only)
        return faiss.SearchParameters(**only) if only else None

    def _nearest_outside(self, x: np.ndarray, lo: int, hi: int, ef: int) -> np.ndarray:
        """Squared distance of each row of x to its nearest bank patch outside ids [lo, hi)."""
        import faiss

        inside = faiss.IDSelectorRange(lo, hi)  # kept referenced while FAISS uses it
        sel = faiss.IDSelectorNot(inside)
        d, i = self.index.search(x, 1, params=self._params(ef, sel))
        d, lost = d[:, 0], i[:, 0] < 0
        if lost.any():  # the filtered graph walk found none: scan the others
            rest = np.concatenate([self.features[:lo], self.features[hi:]])
            d[lost] = ((x[lost, None, :] - rest[None]) ** 2).sum(-1).min(1)
        return d


def bank_size_for(n_patches: int, ratio: float, most: int) -> int:
    """How many patches the bank keeps: `ratio` of them (PatchCore's coreset ratio), at most `most`."""
    return max(1, min(int(most), math.ceil(n_patches * float(ratio))))


def top_k_mean(scores: np.ndarray, k: int) -> float:
    """The image score: the mean of its k highest patch scores (k = 1: PatchCore's maximum)."""
    k = min(int(k), scores.size)
    return float(np.partition(scores.ravel(), scores.size - k)[-k:].mean())


def score_statistics(normal: list[np.ndarray], k: int) -> np.ndarray:
    """(mean, sd) of the normal images' top-k means and of their patch means: [mu_top, sd_top, mu_all, sd_all].
    A spread of 0 (one image, identical images) becomes a tiny one: the units stay finite."""
    top = np.array([top_k_mean(d, k) for d in normal])
    everything = np.array([float(np.mean(d)) for d in normal])
    stats = []
    for v in (top, everything):
        mu = float(v.mean())
        stats += [mu, max(float(v.std()), 1e-6 * max(abs(mu), 1.0))]
    return np.array(stats)


def local_or_global(scores: np.ndarray, k: int, stats: np.ndarray) -> float:
    """The larger of the top-k mean and the mean of all patch scores, each in standard deviations of the
    normal images' (score_statistics): a local defect raises the first, a change over the whole image the
    second (every patch a little farther, none much). One-sided, as PatchCore's distances: the normal
    images' own scores leave their patches out, so a new normal image's patch mean sits a little below theirs."""
    mu_top, sd_top, mu_all, sd_all = (float(s) for s in stats)
    return max((top_k_mean(scores, k) - mu_top) / sd_top, (float(np.mean(scores)) - mu_all) / sd_all)
