"""reconstruction: the null prompt's mean denoising error over the draws (the store's `err_null`)."""
from __future__ import annotations

import torch

from diffmine.apps.anomaly.kinds.base import ScoreKind


class Reconstruction(ScoreKind):
    name = "reconstruction"

    def latent_maps(self, inp, idx):
        results = self.det.loaded().estimator.estimate(self.images(inp, idx), [inp.ids[i] for i in idx],
                                                       [[]] * len(idx))
        return torch.stack([torch.from_numpy(r.err_null) for r in results])
