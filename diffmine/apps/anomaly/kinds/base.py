"""`ScoreKind`: what every score kind shares; by default an image's score is the spatial mean of its map."""
from __future__ import annotations

import numpy as np
import torch

from diffmine.core.inputs import ImageInput

DRAW_KEY = "anomaly"  # the one draw stream every image shares


class ScoreKind:
    """A score kind bound to its detector `det` (its settings, its loaded model, its fitted attributes)."""

    name = ""
    saved: dict[str, str] = {}  # file in the detector folder -> the detector's fitted attribute it holds
    maps_at_image_size = False  # anomaly maps at the images' own size (else the model's resolution)

    def __init__(self, det):
        self.det = det

    def check_fit(self) -> None:
        """Refuse settings this kind cannot use with the fitted model (before any work)."""

    def fit(self, inp: ImageInput) -> np.ndarray:
        """Fit on the normal images `inp`; their scores (the detector's decision_scores_)."""
        return self.det.scores_and_maps(inp)[0]

    def restore(self) -> None:
        """Rebuild what the `saved` arrays imply, once a detector folder has set them."""

    def conditions(self) -> list[str]:
        """The label prompts an image is denoised with besides the null prompt."""
        return []

    def rows_per_image(self) -> int:
        """UNet rows one image takes (its draws, times its prompts)."""
        return int(self.det.draws) * (1 + len(self.conditions()))

    def latent_maps(self, inp: ImageInput, idx: list[int]) -> torch.Tensor:
        """(n, h, w) anomaly maps at latent resolution (higher = more anomalous) of images `idx`."""
        raise NotImplementedError

    def score_group(self, inp: ImageInput, idx: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """(scores (n,), maps (n, h, w)) of the images `idx`, one of the detector's groups."""
        maps = self.latent_maps(inp, idx)
        return maps.double().mean(dim=(1, 2)).numpy(), maps

    def pixel_maps(self, maps: torch.Tensor) -> np.ndarray:
        """The maps of `score_group` as the detector's anomaly_maps: upsampled to the model's resolution."""
        from typicality.formula import upsample

        return upsample(maps, (self.det.resolution_,) * 2).numpy()

    def images(self, inp: ImageInput, idx: list[int]) -> torch.Tensor:
        """Images `idx` at the model's resolution."""
        return torch.from_numpy(inp.load(self.det.resolution_, idx))

    def normal_prompt(self) -> str:
        """The normal label's prompt when the model was finetuned with it, else the null prompt."""
        prompts, det = self.det.loaded().prompts, self.det
        return prompts.prompt(det.normal_label) if det.normal_label in det.labels_known_ else prompts.null_prompt
