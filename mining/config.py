"""The mining stage's settings (`diffmine mine`), each default once, with its source."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from diffmine.core.settings import (LABEL_COLUMN, check, check_choice, check_positive, check_required,
                                     option, skip_bad_option)

DIFT_T = 161  # docs/method.md §4
DIFT_BLOCK = 1  # docs/method.md §4: up_blocks[1] (1280 channels at 1/16 resolution for SD v1.5)
DIFT_DRAWS = 8  # docs/method.md §4
# docs/method.md §3: k = 50 px at 256 px images, 64 px at 512 px (mining.patches.default_patch_size).
PUBLISHED_PATCH = ((256, 50), (512, 64))
PATCH_DEFAULT = (f"{PUBLISHED_PATCH[0][1]} px at {PUBLISHED_PATCH[0][0]} px, {PUBLISHED_PATCH[1][1]} px at "
                 f"{PUBLISHED_PATCH[1][0]} px, proportional below {PUBLISHED_PATCH[0][0]}")
PER_IMAGE = 5      # docs/method.md §3: most typical non-overlapping patches kept per image
PER_LABEL = 1000   # docs/method.md §3: most typical patches kept per label
CLUSTERS = 32      # docs/method.md §4: k-means clusters per label
MIN_MEMBERS = 3    # docs/method.md §4: clusters with fewer patches are dropped
MIN_IMAGES = 2     # clusters drawn from fewer images are dropped


@dataclass
class MineConfig(RuntimeSettings):
    model: str | None = option(None, "the finetuned diffusers folder the maps were computed with (DIFT features)")
    data: str = option(None, "image folder the typicality store was computed on", required=True)
    typicality: str = option(None, "typicality store folder (diffmine typicality --out)", required=True)
    out: str = option(None, "output folder: report.html, clusters.csv/json, grids, metrics.json", required=True)
    label_column: str = option(LABEL_COLUMN, "label column of metadata.csv/jsonl")
    skip_bad: bool = skip_bad_option()
    force: bool = option(False, "mine a store computed with another model or other data")
    patch: int | None = option(None, f"patch size in px (default: {PATCH_DEFAULT})", source="docs/method.md §3")
    per_image: int = option(PER_IMAGE, "most typical non-overlapping patches kept per image", source="docs/method.md §3")
    per_label: int = option(PER_LABEL, "most typical patches kept per label", source="docs/method.md §3")
    clusters: int = option(CLUSTERS, "k-means clusters per label", source="docs/method.md §4")
    feature: str = option("dift", "patch descriptor", choices=("dift", "clip"))
    clip_model: str | None = option(None, "local open_clip folder or ARCH:/path/weights for --feature clip")
    dift_t: int = option(DIFT_T, "DIFT timestep", source="docs/method.md §4")
    dift_block: int = option(DIFT_BLOCK, "DIFT UNet up block", source="docs/method.md §4")
    dift_draws: int = option(DIFT_DRAWS, "noise draws averaged per DIFT feature map", source="docs/method.md §4")
    min_members: int = option(MIN_MEMBERS, "drop clusters with fewer patches", source="docs/method.md §4")
    min_images: int = option(MIN_IMAGES, "drop clusters drawn from fewer images")
    seed: int = option(0, "seed of k-means, DIFT noise and the random baseline")
    kmeans_iter: int = option(20, "FAISS k-means iterations")
    spherical: bool = option(True, "spherical k-means (unit-norm centroids, cosine distance)")
    batch_size: int = option(8, "images per feature forward (x dift draws UNet samples)")
    map_batch: int = option(64, "maps per patch-scoring chunk")
    show: int = option(12, "members shown per cluster in the report")
    grid_rows: int = option(6, "clusters per grid (top 5-6)", source="docs/method.md §4")
    grid_cols: int = option(7, "patches per grid row (6-7)", source="docs/method.md §4")
    baselines: int = option(12, "random / least-typical patches shown per label", source="docs/method.md §3")
    eval_sigma: float = option(0.0, "with ground truth: Gaussian blur of each map before the map metrics "
                               "(pointing game, pixel AUROC, shared/characteristic), sigma in px at 256 px, "
                               "scaled; 10 = the published display blur (docs/method.md §2), 0 = the raw maps")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check_choice(self, "feature")
        check_positive(self, ("patch", "per_image", "per_label", "clusters", "kmeans_iter", "min_members",
                              "min_images", "dift_draws", "batch_size", "map_batch", "grid_rows", "grid_cols"))
        check_positive(self, ("show", "baselines", "dift_t", "dift_block", "eval_sigma"), minimum=0)
        check(self.feature != "clip" or bool(self.clip_model), "clip_model",
              "is required with --feature clip (a local open_clip folder or ARCH:/path/weights)")
        check(self.feature != "dift" or bool(self.model), "model",
              "is required with --feature dift (the finetuned diffusers folder)")
