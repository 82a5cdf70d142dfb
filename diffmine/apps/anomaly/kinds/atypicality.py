"""atypicality: -T(x | normal label), or the margin max_{c != normal} T(x | c) - T(x | normal)."""
from __future__ import annotations

import torch

from diffmine.core.settings import ConfigError

from diffmine.apps.anomaly.kinds.base import ScoreKind


class Atypicality(ScoreKind):
    name = "atypicality"

    def check_fit(self):
        det = self.det
        if det.labels_known_ and det.normal_label not in det.labels_known_:
            raise ConfigError("normal_label", f"'{det.normal_label}' is not a label of {det.model_path_} "
                              f"(labels: {', '.join(det.labels_known_)})")

    def conditions(self):
        det = self.det
        return [det.normal_label] + [c for c in det.labels_known_ if c != det.normal_label]

    def latent_maps(self, inp, idx):
        conds = self.conditions()
        results = self.det.loaded().estimator.estimate(self.images(inp, idx), [inp.ids[i] for i in idx],
                                                       [conds] * len(idx))
        maps = []
        for r in results:
            diff = torch.from_numpy(r.diff)  # (L, h, w): row 0 the normal label
            if len(diff) == 1:
                maps.append(-diff[0])
            else:  # margin to the label that explains x best (chosen on the whole image)
                best = 1 + int(diff[1:].mean(dim=(1, 2)).argmax())
                maps.append(diff[best] - diff[0])
        return torch.stack(maps)
