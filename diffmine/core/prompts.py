"""How labels become text prompts, and the published presets (docs/method.md §1)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

CONFIG_NAME = "diffmine_prompts.json"
NULL_RATE = 0.05  # docs/method.md §1: 5-10 % of samples see the null prompt (a prompt template's default)


@dataclass(frozen=True)
class PromptTemplate:
    template: str = "{label}"
    null_prompt: str = ""
    null_rate: float = NULL_RATE

    def __post_init__(self):
        if "{label}" not in self.template:
            raise ValueError(f"prompt template {self.template!r} has no '{{label}}' placeholder")
        if not 0.0 <= self.null_rate <= 1.0:  # 1: a domain-only model that never sees a label
            raise ValueError(f"null rate must be in [0, 1], got {self.null_rate}")

    def prompt(self, labels: str | Sequence[str]) -> str:
        """Prompt for one label or a multi-label set (comma-joined, as for chest X-ray findings)."""
        if isinstance(labels, str):
            labels = [labels]
        return self.template.format(label=", ".join(labels))

    def save(self, folder: str | Path) -> None:
        Path(folder, CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "PromptTemplate":
        path = Path(folder, CONFIG_NAME)
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))


# docs/method.md §1, table of published prompts. {label} stands for decade / country / scene / findings.
PRESETS: dict[str, PromptTemplate] = {
    "cars": PromptTemplate("A car from the {label}s.", "A car.", 0.05),
    "faces": PromptTemplate("A face portrait of the {label}s.", "A face portrait", 0.10),
    "street_view": PromptTemplate("A google street view image in {label}", "A google street view image", 0.05),
    "scenes": PromptTemplate("Image of {label}.", "", 0.05),
    "chest_xray": PromptTemplate("Chest X-Ray with {label}.", "Chest X-Ray.", 0.05),
}


def resolve_prompts(preset: str | None = None, template: str | None = None,
                    null_prompt: str | None = None, null_rate: float | None = None) -> PromptTemplate:
    """A preset by name, with any explicitly given field overriding it."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown prompt preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset] if preset else PromptTemplate()
    return PromptTemplate(
        template if template is not None else base.template,
        null_prompt if null_prompt is not None else base.null_prompt,
        null_rate if null_rate is not None else base.null_rate,
    )
