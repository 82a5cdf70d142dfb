"""features: the distance of an image's DIFT features to its nearest normal images (PyOD's KNN)."""
from __future__ import annotations

import numpy as np
import torch

from diffmine.core.settings import ConfigError

from diffmine.apps.anomaly.kinds.base import ScoreKind

FEATURES_FILE = "features.npy"


class Features(ScoreKind):
    name = "features"
    saved = {FEATURES_FILE: "train_features_"}

    def fit(self, inp):
        det = self.det
        det.train_features_ = np.concatenate([self.features(inp, g)[0] for g in det.groups(inp)])
        if len(det.train_features_) <= int(det.n_neighbors):
            raise ConfigError("n_neighbors", f"needs more than {det.n_neighbors} normal images, "
                              f"got {len(det.train_features_)}")
        self.restore()
        return det.knn_.decision_scores_.copy()  # leave-one-out: not 0 for itself

    def restore(self):
        from pyod.models.knn import KNN

        det = self.det
        det.knn_ = KNN(n_neighbors=int(det.n_neighbors), contamination=det.contamination).fit(det.train_features_)

    def rows_per_image(self):
        from mining.features import DIFT_DRAWS

        return DIFT_DRAWS

    def features(self, inp, idx) -> tuple[np.ndarray, torch.Tensor]:
        """(n, D) flattened, L2-normalised DIFT feature maps, and (n, C, h, w) the maps, per-cell normalised."""
        from mining.features import DIFT_DRAWS, DiftExtractor, l2_normalize

        det = self.det
        # DIFT runs every image with all its draws: batch_size // draws images make batch_size UNet rows
        dift = DiftExtractor(det.loaded().bundle, seed=int(det.seed),
                             batch_size=max(1, int(det.batch_size) // DIFT_DRAWS))
        fmaps = dift(self.images(inp, idx), [self.normal_prompt()] * len(idx))
        flat = l2_normalize(fmaps.reshape(len(fmaps), -1)).numpy()
        return flat, torch.nn.functional.normalize(fmaps, dim=1)

    def score_group(self, inp, idx):
        flat, cells = self.features(inp, idx)
        return self.det.knn_.decision_function(flat), self.cell_distances(flat, cells)

    def cell_distances(self, flat: np.ndarray, cells: torch.Tensor) -> torch.Tensor:
        """Per cell, 1 - cosine similarity to the nearest normal image's features at that cell."""
        train = torch.from_numpy(self.det.train_features_)
        nearest = torch.cdist(torch.from_numpy(flat), train).argmin(dim=1)
        train_cells = torch.nn.functional.normalize(train[nearest].reshape(cells.shape), dim=1)
        return 1 - (cells * train_cells).sum(dim=1)
