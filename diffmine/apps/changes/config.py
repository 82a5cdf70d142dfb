"""Settings of `diffmine changes`."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from mining.config import (CLUSTERS, DIFT_BLOCK, DIFT_DRAWS, DIFT_T, MIN_IMAGES, MIN_MEMBERS, PATCH_DEFAULT, PER_IMAGE,
                           PER_LABEL)
from typicality.config import DEFAULT_DRAWS, PUBLISHED_T_RANGE
from diffmine.core.settings import check_positive, check_required, check_t_range, option, skip_bad_option


@dataclass
class ChangesConfig(RuntimeSettings):
    model: str | None = option(None, "the model the translations were made with (folder, 'tiny' or hub id)",
                               required=True)
    translations: str | None = option(None, "output folder of `diffmine translate --to all`", required=True)
    out: str | None = option(None, "output folder (report.html, clusters.csv, patches)", required=True)
    clusters: int = option(CLUSTERS, "k-means clusters", source="docs/method.md §4")
    patch: int | None = option(None, f"patch size in px (default: {PATCH_DEFAULT})", source="docs/method.md §3")
    per_image: int = option(PER_IMAGE, "most co-typical non-overlapping patches kept per image",
                            source="docs/method.md §3")
    top: int = option(PER_LABEL, "most co-typical patches kept overall", source="docs/method.md §3")
    draws: int = option(DEFAULT_DRAWS, "typicality draws per translation (stratified, antithetic, as the typicality stage)")
    t_range: tuple[float, float] = option(PUBLISHED_T_RANGE, "typicality timestep range, fractions of T",
                                          source="docs/method.md §2", metavar="LO HI")
    dift_t: int = option(DIFT_T, "DIFT timestep", source="docs/method.md §4")
    dift_block: int = option(DIFT_BLOCK, "DIFT UNet up block", source="docs/method.md §4")
    dift_draws: int = option(DIFT_DRAWS, "DIFT noise draws", source="docs/method.md §4")
    min_members: int = option(MIN_MEMBERS, "clusters with fewer patches are dropped")
    min_images: int = option(MIN_IMAGES, "clusters from fewer images are dropped")
    show: int = option(8, "patch sequences shown per cluster in the report")
    batch_size: int = option(64, "UNet rows per typicality forward")
    seed: int = option(0, "seed (typicality draws, DIFT noise, k-means)")
    skip_bad: bool = skip_bad_option()
    group: int = option(8, "source images per unit of work (split over processes; a kill loses at most one "
                        "group per process)")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check_positive(self, ("clusters", "per_image", "top", "draws", "dift_draws", "min_members", "min_images",
                              "show", "batch_size", "group"))
        check_positive(self, ("patch",))
        check_t_range(self.t_range)
