"""patches: PatchCore on patch features of tiles at the image's own resolution (detector.py, ../patches.py)."""
from __future__ import annotations

import numpy as np
import torch

from diffmine.core.inputs import ImageInput

from diffmine.apps.anomaly.kinds.base import DRAW_KEY, ScoreKind

PATCHES_FILE = "patches.npy"
PATCH_OWNERS_FILE = "patch_owners.npy"
PATCH_SCALES_FILE = "patch_scales.npy"  # vae+pixels: each half's divisor (patches.half_scales)
SCORE_STATS_FILE = "image_score_stats.npy"  # top-k-or-mean: the normal images' (patches.score_statistics)
JOINT = "vae+pixels"


class Patches(ScoreKind):
    name = "patches"
    maps_at_image_size = True

    def __init__(self, det):
        super().__init__(det)
        self._bank = None

    @property
    def saved(self) -> dict[str, str]:
        files = {PATCHES_FILE: "bank_features_", PATCH_OWNERS_FILE: "bank_owner_"}
        if self.det.patch_features == JOINT:
            files[PATCH_SCALES_FILE] = "patch_scales_"
        if self.det.image_score != "top-k":
            files[SCORE_STATS_FILE] = "image_score_stats_"
        return files

    def fit(self, inp):
        """Build the patch memory bank from the normal images; their scores, each without its own patches."""
        from tqdm.auto import tqdm

        from diffmine.apps.anomaly.patches import (bank_size_for, greedy_coreset, half_scales, random_subset,
                                                   score_statistics)

        det = self.det
        det.__dict__.pop("patch_scales_", None)  # a refit measures its own scales from unscaled features
        per_image = []
        with tqdm(total=len(inp), desc="anomaly fit (patches: features)", disable=not det.progress) as bar:
            for g in det.groups(inp):
                per_image += [v.reshape(-1, v.shape[-1]).half() for v in self.tile_patches(inp, g)]
                bar.update(len(g))
        owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(per_image)])
        pool = torch.cat(per_image)
        if det.patch_features == JOINT:
            det.patch_scales_ = half_scales(pool, owner, self.learned_width(pool.shape[1]), int(det.seed))
            divisor = torch.from_numpy(det.patch_scales_)
            pool = (pool.float() / divisor).half()
            per_image = list(pool.split([len(v) for v in per_image]))
        k = bank_size_for(len(pool), det.coreset_ratio, det.bank_size)
        if det.progress:
            print(f"anomaly fit (patches): memory bank of {k} of {len(pool)} patches ({det.coreset})")
        pick = (greedy_coreset(pool, k, int(det.seed)) if det.coreset == "greedy"
                else random_subset(len(pool), k, int(det.seed)))
        det.bank_features_ = pool[torch.from_numpy(pick)].float().numpy()
        det.bank_owner_ = owner[pick]
        self.restore()
        bank = self.bank()
        top = int(det.top_k)  # an image score needs its top-k patches only (MemoryBank.distances)
        # the other rows are the screening walk's distances: upper bounds, nearly always the nearest's,
        # close enough for the patch mean of top-k-or-mean
        normal = [bank.distances(v.float().numpy(), exclude_owner=i, top=top) for i, v in enumerate(per_image)]
        det.image_score_stats_ = score_statistics(normal, top)
        return np.array([self.image_score(d) for d in normal])

    def restore(self):
        self._bank = None

    def bank(self):
        """The memory bank (FAISS) over the detector's bank_features_."""
        if self._bank is None:
            from diffmine.apps.anomaly.patches import MemoryBank

            self._bank = MemoryBank(self.det.bank_features_, self.det.bank_owner_, self.det.bank_search)
        return self._bank

    def image_score(self, patch_scores: np.ndarray) -> float:
        from diffmine.apps.anomaly.patches import local_or_global, top_k_mean

        det = self.det
        if det.image_score == "top-k":
            return top_k_mean(patch_scores, int(det.top_k))
        return local_or_global(patch_scores, int(det.top_k), det.image_score_stats_)

    def rows_per_image(self):
        learned = self.det.patch_features in ("dift", "denoise")
        return len(self.tile_boxes()) * (int(self.det.patch_draws) if learned else 1)

    def tile_stride(self) -> int:
        """Pixels between tiles: `tile_stride`, or one tile (side by side)."""
        return int(self.det.tile_stride or self.det.resolution_)

    def tile_boxes(self) -> np.ndarray:
        from diffmine.apps.anomaly.patches import tile_boxes

        h, w, _ = self.det.geometry_
        return tile_boxes(h, w, self.det.resolution_, self.tile_stride())

    def tile_patches(self, inp: ImageInput, idx: list[int]) -> list[torch.Tensor]:
        """Per image of `idx`: (tiles, h, w, C) patch features of its tiles (patches.patch_vectors)."""
        from diffmine.apps.anomaly.patches import cut_tiles, joint_vectors, patch_vectors

        det = self.det
        tiles = [cut_tiles(inp.rgb(i), det.resolution_, self.tile_stride()) for i in idx]
        batch = torch.from_numpy(np.concatenate(tiles))
        pool = int(det.patch_pool)
        if det.patch_features == JOINT:
            vectors = joint_vectors(patch_vectors(self.feature_maps(batch, "vae"), pool),
                                    patch_vectors(self.feature_maps(batch, "pixels", self.joint_pixel_side()), pool,
                                                  normalize=False))
            if hasattr(det, "patch_scales_"):  # fitted: each half in units of its normal variation
                vectors = vectors / torch.from_numpy(det.patch_scales_)
        else:
            # log denoising errors and pixels are on a common scale already: their size (an error, a
            # brightness) is the signal, not normalised away
            vectors = patch_vectors(self.feature_maps(batch, det.patch_features, int(det.patch_size)), pool,
                                    normalize=det.patch_features not in ("denoise", "pixels"))
        return list(vectors.split([len(t) for t in tiles]))

    def joint_pixel_side(self) -> int:
        """vae+pixels: pixel patches two latent cells wide, one a cell, on the VAE's grid (the same cells)."""
        return 2 * self.det.loaded()[0].vae_scale_factor

    def learned_width(self, width: int) -> int:
        """vae+pixels: how many of `width` joint columns are the VAE's (the rest are pixels)."""
        return width - 3 * self.joint_pixel_side() ** 2

    def feature_maps(self, batch: torch.Tensor, source: str, pixel_side: int = 0) -> torch.Tensor:
        """(n, C, h, w) feature maps of tiles (n, 3, R, R) from one source of PATCH_FEATURES."""
        from mining.features import DiftExtractor

        from diffmine.apps.anomaly.denoise_features import denoising_error_features
        from diffmine.apps.anomaly.encoder_features import vae_encoder_features
        from diffmine.apps.anomaly.pixel_features import pixel_patch_features

        det = self.det
        if source == "pixels":
            return pixel_patch_features(batch, pixel_side)
        bundle, _, est = det.loaded()
        if source == "vae":
            return vae_encoder_features(bundle.vae, batch, int(det.batch_size))
        if source == "denoise":
            return denoising_error_features(est, batch, self.denoise_draws(), int(det.batch_size))
        draws = int(det.patch_draws)
        dift = DiftExtractor(bundle, t=int(det.patch_t), block=int(det.patch_block), draws=draws,
                             seed=int(det.seed), batch_size=max(1, int(det.batch_size) // draws))
        return dift(batch, [self.normal_prompt()] * len(batch))

    def denoise_draws(self):
        """denoise features: the `patch_draws` (timestep, noise) pairs every tile shares (common random numbers)."""
        from typicality.draws import make_draws

        det = self.det
        bundle, _, est = det.loaded()
        side = det.resolution_ // bundle.vae_scale_factor
        shape = (int(bundle.unet.config.in_channels), side, side)
        return make_draws(int(det.patch_draws), shape, int(det.seed), DRAW_KEY, est.t_range,
                          est.num_train_timesteps, est.schedule, est.antithetic)

    def score_group(self, inp, idx):
        """(scores (n,), stitched maps (n, H, W) at the images' own size) of the images `idx`."""
        from diffmine.apps.anomaly.patches import stitch

        bank, boxes = self.bank(), self.tile_boxes()
        h, w, _ = self.det.geometry_
        scores, maps = [], []
        for v in self.tile_patches(inp, idx):
            d = bank.distances(v.reshape(-1, v.shape[-1]).numpy())
            scores.append(self.image_score(d))
            maps.append(stitch(torch.from_numpy(d.reshape(v.shape[:3])).float(), boxes, (h, w)))
        return np.array(scores), torch.stack(maps)

    def pixel_maps(self, maps):
        return maps.numpy()
