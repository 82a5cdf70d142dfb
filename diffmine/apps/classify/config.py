"""Settings of `diffmine classify`."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from typicality.config import PUBLISHED_T_RANGE
from diffmine.core.settings import (LABEL_COLUMN, check_choice, check_positive, check_required, check_t_range,
                                     option, skip_bad_option)


@dataclass
class ClassifyConfig(RuntimeSettings):
    model: str | None = option(None, "finetuned model folder (its labels are the classes), or 'tiny' (the shipped "
                               "towns model)", required=True)
    data: str | None = option(None, "images to classify; label folders / metadata give the true labels "
                              "(then accuracy, confusion matrix and the label audit)", required=True)
    out: str | None = option(None, "output folder", required=True)
    draws: int = option(32, "draws per label for the finalists (the exhaustive run: for every label)")
    prune: str = option("adaptive", "adaptive: a few draws for every label, more for the best k, then the "
                        "best 1 (diffusion classifier); off: every label with every draw", choices=("adaptive", "off"))
    first_draws: int = option(8, "adaptive: draws per label in the first round (every label)")
    keep: int = option(3, "adaptive: labels kept after the first round")
    t_range: tuple[float, float] = option(PUBLISHED_T_RANGE, "timestep range as fractions of T", source="docs/method.md §2")
    label_column: str = option(LABEL_COLUMN, "metadata column of the labels")
    skip_bad: bool = skip_bad_option()
    audit: bool = option(True, "write the label audit (audit.html): images more typical of another label")
    audit_top: int = option(50, "images shown in the audit page")
    batch_size: int = option(64, "UNet rows per forward")
    seed: int = option(0, "seed of the draws")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check_choice(self, "prune")
        check_positive(self, ("draws", "first_draws", "keep", "batch_size", "audit_top"))
        check_t_range(self.t_range)
