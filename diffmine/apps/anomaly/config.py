"""Settings of `diffmine anomaly fit` and `diffmine anomaly score`, and the score kinds they name."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from mining.config import DIFT_BLOCK, DIFT_T
from typicality.config import PUBLISHED_T_RANGE
from diffmine.core.settings import (check, check_choice, check_positive, check_range, check_required,
                                     check_t_range, option, skip_bad_option)

# The score kinds (detector.py documents each). Here, not in detector.py: the config must not
# import PyOD, so every other command starts without the anomaly extra.
SCORES = ("reconstruction", "atypicality", "trajectory", "features", "patches")
CORESETS = ("greedy", "random")
# encoder_features.py / mining.features.DiftExtractor / denoise_features.py / pixel_features.py
PATCH_FEATURES = ("vae", "dift", "denoise", "pixels")

# Fewer draws than mining's 64: an image-level score averages the whole map, which needs fewer
# draws than a per-pixel map to rank images stably.
ANOMALY_DRAWS = 16


@dataclass
class AnomalyFitConfig(RuntimeSettings):
    data: str | None = option(None, "folder of normal images (any layout; every image under it)", required=True)
    out: str | None = option(None, "detector folder to write", required=True)
    model: str | None = option(None, "model folder to score with, or 'tiny' (the shipped towns model; enough "
                               "for --score features) (give this or --base)")
    base: str | None = option(None, "model to finetune on the normal images: 'tiny' (the shipped towns model) "
                              "or a model folder")
    score: str = option("reconstruction", "anomaly score", choices=SCORES)
    contamination: float = option(0.1, "expected share of anomalies: the threshold is the training scores' "
                                  "1 - contamination quantile (PyOD's rule)")
    normal_label: str = option("normal", "label of the normal data (the label --base finetunes with; "
                               "atypicality scores -T(x | this label))")
    draws: int = option(ANOMALY_DRAWS, "noise draws per image (trajectory: noise draws per trajectory)")
    t_range: tuple[float, float] = option(PUBLISHED_T_RANGE, "timestep range as fractions of T", source="docs/method.md §2")
    trajectory_start: float = option(0.3, "trajectory: partial noising level as a fraction of T")
    trajectory_steps: int = option(10, "trajectory: DDIM steps back to t = 0")
    finetune_steps: int = option(200, "finetuning steps with --base")
    finetune_lr: float = option(1e-4, "finetuning learning rate with --base", source="docs/method.md §1")
    finetune_batch: int = option(16, "finetuning batch size with --base")
    resolution: int | None = option(None, "image size the model sees (default: the model's)")
    batch_size: int = option(64, "UNet rows per forward")
    seed: int = option(0, "seed of draws and finetuning")
    n_neighbors: int = option(5, "features: nearest normal images whose distance is the score (as PyOD's KNN)")
    skip_bad: bool = skip_bad_option()
    force: bool = option(False, "replace the detector already in --out")
    # patches (PatchCore on patch features of tiles at the image's own resolution, detector.py)
    tile_stride: int | None = option(None, "patches: pixels between tiles of --resolution px (default: one "
                                     "tile, tiles side by side; less: tiles overlap, smoother maps, more work)")
    patch_features: str = option("vae", "patches: what a patch is described by: the VAE encoder's last feature "
                                 "map (vae), DIFT features (dift: --patch-block, --patch-t, --patch-draws) or, "
                                 "for comparison, denoising errors (denoise: --patch-draws over --t-range) or "
                                 "raw pixel patches (pixels: --patch-size px, every half patch)",
                                 choices=PATCH_FEATURES)
    patch_size: int = option(8, "patches: side in px of a pixel patch with --patch-features pixels (one "
                             "every half patch)")
    patch_pool: int = option(1, "patches: cells each patch feature is averaged over, per side (1: none, a "
                             "one-cell defect keeps its contrast; 3: PatchCore's 3x3 neighbourhood)")
    patch_block: int = option(DIFT_BLOCK, "patches: UNet up block whose output cells are the patch features",
                              source="docs/method.md §4")
    patch_t: int = option(DIFT_T, "patches: timestep of the DIFT features", source="docs/method.md §4")
    patch_draws: int = option(2, "patches: noise draws the DIFT features average over (denoise: draws, each "
                              "its own feature components)")
    top_k: int = option(1, "patches: the image score is the mean of its top-k patch scores (1: the maximum, "
                        "as PatchCore)")
    coreset: str = option("greedy", "patches: how the memory bank is subsampled (greedy k-center, as "
                          "PatchCore, or random)", choices=CORESETS)
    coreset_ratio: float = option(0.1, "patches: share of the normal patches the memory bank keeps "
                                  "(PatchCore's coreset ratio)")
    bank_size: int = option(16384, "patches: the most patches the memory bank keeps (fit and scoring stay "
                            "linear in the number of normal images)")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check_choice(self, "score")
        check_range(self, "contamination", 0, 0.5, closed="right")
        check((self.model is None) != (self.base is None), "model", "give either --model or --base (one of them)")
        check_positive(self, ("draws", "trajectory_steps", "finetune_steps", "finetune_batch", "batch_size",
                              "n_neighbors", "tile_stride", "patch_draws", "patch_pool", "top_k", "bank_size"))
        check_positive(self, ("patch_size",), minimum=2)
        check_choice(self, "coreset")
        check_choice(self, "patch_features")
        check(self.patch_pool % 2 == 1, "patch_pool", f"must be odd (a neighbourhood centred on the cell), "
              f"got {self.patch_pool}")
        check_range(self, "coreset_ratio", 0, 1, closed="right")
        check(self.patch_block >= 0, "patch_block", f"must be >= 0, got {self.patch_block}")
        check(self.patch_t >= 0, "patch_t", f"must be >= 0, got {self.patch_t}")
        check_range(self, "trajectory_start", 0, 1, closed="right")
        check_t_range(self.t_range)
        check_positive(self, ("resolution",), minimum=8)


@dataclass
class AnomalyScoreConfig(RuntimeSettings):
    detector: str | None = option(None, "detector folder written by `diffmine anomaly fit`", required=True)
    data: str | None = option(None, "folder of images to score (every image under it)", required=True)
    out: str | None = option(None, "CSV of scores to write (image_id, path, score, outlier, probability)",
                             required=True)
    maps: str | None = option(None, "folder for per-pixel anomaly map overlays (PNG), optional")
    skip_bad: bool = skip_bad_option()

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
