"""Settings of `diffmine localize`: one dataclass, each default written once."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from diffmine.evaluation.localization import DEFAULT_MAP_THRESHOLD
from diffmine.core.settings import (LABEL_COLUMN, check_positive, check_range, check_required, check_t_range,
                                     defaults, option, skip_bad_option)
from typicality.config import DEFAULT_DRAWS, TypicalityConfig

_TYPICALITY = defaults(TypicalityConfig)  # the maps' settings that localize does not change
FULL_T_RANGE = (0.0, 1.0)  # docs/method.md §2: X-ray findings are scored over the whole schedule


@dataclass
class LocalizeConfig(RuntimeSettings):
    model: str | None = option(None, "finetuned model: a folder (diffusers SD layout, with diffmine_train.json labels), 'tiny' or a hub id",
                               required=True)
    data: str | None = option(None, "data folder holding the boxed images (PNG or DICOM)", required=True)
    boxes: str | None = option(None, "boxes CSV: NIH BBox_List_2017.csv as distributed, or file_name,label,x,y,w,h",
                               required=True)
    out: str | None = option(None, "output folder (metrics.json, per_image.csv, report.html)", required=True)
    base_model: str | None = option(None, "non-finetuned model to score the same way, side by side (folder, 'tiny' or hub id)")
    t_range: tuple[float, float] = option(FULL_T_RANGE, "timestep range as fractions of T; the full range for X-ray",
                                          source="docs/method.md §2", resume_key=True)
    draws: int | None = option(None, f"noise draws per map (default: the typicality engine's, {DEFAULT_DRAWS} "
                               "stratified, antithetic)", resume_key=True)
    threshold: float = option(DEFAULT_MAP_THRESHOLD, "fraction of the min-max normalised map above which pixels "
                              "form the predicted box (IoBB)")
    label_column: str = option(LABEL_COLUMN, "label column of the data folder's metadata")
    skip_bad: bool = skip_bad_option("bad box rows")
    seed: int = option(0, "seed of the noise draws", resume_key=True)
    batch_size: int = option(_TYPICALITY["batch_size"], "UNet rows per forward")
    group: int = option(_TYPICALITY["group"], "images per unit of work of the typicality stage (dealt out to the "
                        "processes of `accelerate launch`)")
    show: int = option(24, "overlays per finding in report.html (best to worst; 0 = all)")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check_t_range(self.t_range)
        check_positive(self, ["draws", "batch_size", "group"])
        check_positive(self, ["show"], minimum=0)
        check_range(self, "threshold", 0.0, 1.0, closed="right")
