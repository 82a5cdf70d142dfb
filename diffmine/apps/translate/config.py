"""The settings of `diffmine translate` (docs/method.md §5); those marked `resume_key` a resumed run must agree on."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from diffmine.core.settings import (LABEL_COLUMN, check, check_choice, check_positive, check_range,
                                     check_required, option, skip_bad_option)
from diffmine.apps.translate.layers import PUBLISHED_ATTENTION_SHARE, PUBLISHED_RESIDUAL_SHARE

METHODS = ("pnp", "sdedit")


@dataclass
class TranslateConfig(RuntimeSettings):
    """`resume_key` fields change the pictures: a resumed run (--out already holding translations) must
    agree on them."""
    model: str | None = option(None, "finetuned diffusers model folder", required=True, resume_key=True)
    data: str | None = option(None, "labeled image folder (the images to translate)", required=True, resume_key=True)
    out: str | None = option(None, "output folder (PNGs, grids, translations.csv, index.html)", required=True)
    to: str | None = option(None, "target label, or 'all' for every other label", required=True, metavar="LABEL|all",
                            resume_key=True)
    method: str = option("pnp", "pnp (Plug-and-Play feature injection) or sdedit (noise, then denoise)",
                         choices=METHODS, source="docs/method.md §5", resume_key=True)
    steps: int = option(50, "DDIM sampling steps", source="docs/method.md §5", resume_key=True)
    guidance: float = option(7.5, "classifier-free guidance scale (null prompt as the negative); 1 = none",
                             source="docs/method.md §5", resume_key=True)
    inversion_steps: int = option(50, "DDIM inversion steps (pnp); the sampling timesteps must be among them",
                                  source="docs/method.md §5 (the reference used 999)", resume_key=True)
    strength: float = option(0.6, "sdedit: share of the noise schedule the image is noised to, in (0, 1]",
                             resume_key=True)
    residual_injection: float | None = option(
        None, "pnp: share of the sampling steps that inject the source's residual-block features; none = the "
              f"layer mapping's (SD v1.5: {PUBLISHED_RESIDUAL_SHARE}, as published)", source="docs/method.md §5",
        resume_key=True)
    attention_injection: float | None = option(
        None, "pnp: share of the sampling steps that inject the source's self-attention queries and keys; "
              f"none = the layer mapping's (SD v1.5: {PUBLISHED_ATTENTION_SHARE}, as published)", source="docs/method.md §5",
        resume_key=True)
    layers: str | None = option(None, "JSON file mapping UNet layouts to injection layers "
                                      "(default: diffmine/apps/translate/layers.json: SD v1.5 and the tiny model)",
                                resume_key=True)
    batch_size: int = option(8, "translations (image, target) per UNet forward")
    seed: int = option(0, "seed (sdedit noise, per image and target)", resume_key=True)
    label_column: str = option(LABEL_COLUMN, "label column of metadata.csv / metadata.jsonl", resume_key=True)
    skip_bad: bool = skip_bad_option()

    def validate(self) -> None:
        check_required(self)
        check_choice(self, "method")
        self.validate_runtime()
        check_positive(self, ("steps", "inversion_steps", "batch_size"))
        check(self.steps <= 1000, "steps", f"must be <= 1000 (the training schedule), got {self.steps}")
        # 1000 would step the last inverted latent to t = 1000, past the schedule (the reference used 999)
        check(self.inversion_steps <= 999, "inversion_steps",
              f"must be <= 999 (each inversion step goes to the next timestep of the 1000-step training "
              f"schedule), got {self.inversion_steps}")
        check(self.guidance >= 1, "guidance", f"must be >= 1 (1 = no guidance), got {self.guidance}")
        check_range(self, "strength", 0.0, 1.0, closed="right")
        check_range(self, "residual_injection", 0.0, 1.0)
        check_range(self, "attention_injection", 0.0, 1.0)
        check(str(self.to).strip() != "", "to", "must be a label or 'all'")
