"""patches: PatchCore on patch features of tiles at the image's own resolution (detector.py, ../patches.py)."""
from __future__ import annotations

import numpy as np
import torch

from diffmine.core.inputs import ImageInput

from diffmine.apps.anomaly.kinds.base import DRAW_KEY, ScoreKind

PATCHES_FILE = "patches.npy"
PATCH_OWNERS_FILE = "patch_owners.npy"


class Patches(ScoreKind):
    name = "patches"
    saved = {PATCHES_FILE: "bank_features_", PATCH_OWNERS_FILE: "bank_owner_"}
    maps_at_image_size = True

    def __init__(self, det):
        super().__init__(det)
        self._bank = None

    def fit(self, inp):
        """Build the patch memory bank from the normal images; their scores, each without its own patches."""
        from tqdm.auto import tqdm

        from diffmine.apps.anomaly.patches import bank_size_for, greedy_coreset, random_subset

        det = self.det
        per_image = []
        with tqdm(total=len(inp), desc="anomaly fit (patches: features)", disable=not det.progress) as bar:
            for g in det.groups(inp):
                per_image += [v.reshape(-1, v.shape[-1]).half() for v in self.tile_patches(inp, g)]
                bar.update(len(g))
        owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(per_image)])
        pool = torch.cat(per_image)
        k = bank_size_for(len(pool), det.coreset_ratio, det.bank_size)
        if det.progress:
            print(f"anomaly fit (patches): memory bank of {k} of {len(pool)} patches ({det.coreset})")
        pick = (greedy_coreset(pool, k, int(det.seed)) if det.coreset == "greedy"
                else random_subset(len(pool), k, int(det.seed)))
        det.bank_features_ = pool[torch.from_numpy(pick)].float().numpy()
        det.bank_owner_ = owner[pick]
        self.restore()
        bank = self.bank()
        return np.array([self.image_score(bank.distances(v.float().numpy(), exclude_owner=i))
                         for i, v in enumerate(per_image)])

    def restore(self):
        self._bank = None

    def bank(self):
        """The memory bank (FAISS) over the detector's bank_features_."""
        if self._bank is None:
            from diffmine.apps.anomaly.patches import MemoryBank

            self._bank = MemoryBank(self.det.bank_features_, self.det.bank_owner_)
        return self._bank

    def image_score(self, patch_scores: np.ndarray) -> float:
        from diffmine.apps.anomaly.patches import top_k_mean

        return top_k_mean(patch_scores, int(self.det.top_k))

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
        from mining.features import DiftExtractor

        from diffmine.apps.anomaly.denoise_features import denoising_error_features
        from diffmine.apps.anomaly.encoder_features import vae_encoder_features
        from diffmine.apps.anomaly.patches import cut_tiles, patch_vectors
        from diffmine.apps.anomaly.pixel_features import pixel_patch_features

        det = self.det
        bundle, _, est = det.loaded()
        tiles = [cut_tiles(inp.rgb(i), det.resolution_, self.tile_stride()) for i in idx]
        batch = torch.from_numpy(np.concatenate(tiles))
        if det.patch_features == "vae":
            fmaps = vae_encoder_features(bundle.vae, batch, int(det.batch_size))
        elif det.patch_features == "pixels":
            fmaps = pixel_patch_features(batch, int(det.patch_size))
        elif det.patch_features == "denoise":
            fmaps = denoising_error_features(est, batch, self.denoise_draws(), int(det.batch_size))
        else:
            draws = int(det.patch_draws)
            dift = DiftExtractor(bundle, t=int(det.patch_t), block=int(det.patch_block), draws=draws,
                                 seed=int(det.seed), batch_size=max(1, int(det.batch_size) // draws))
            fmaps = dift(batch, [self.normal_prompt()] * len(batch))
        # log denoising errors and pixels are on a common scale already: their size (an error, a brightness)
        # is the signal, not normalised away
        vectors = patch_vectors(fmaps, int(det.patch_pool), normalize=det.patch_features not in ("denoise", "pixels"))
        return list(vectors.split([len(t) for t in tiles]))

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
