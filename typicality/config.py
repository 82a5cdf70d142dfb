"""The typicality stage's settings (`diffmine typicality`), each default once, with its source.

Fields marked `resume_key` change the maps: a store records them and resumes only under the
same values (`store.check_resumable`), together with what the model itself fixes (prompts,
schedule, resolution: `engine.model_identity`).
"""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from diffmine.core.settings import (LABEL_COLUMN, check_choice, check_positive, check_required,
                                     check_t_range, option, skip_bad_option)

SCHEDULES = ("stratified", "uniform")  # typicality.draws implements them
# docs/method.md §2: timesteps drawn in [0.1 T, 0.7 T), the published range for photographs.
PUBLISHED_T_RANGE = (0.1, 0.7)

# docs/method.md §2 publishes N = 100 i.i.d. draws, t uniform in [0.1T, 0.7T). The same accuracy
# takes fewer draws: stratified t removes the between-timestep variance (the map's scale varies
# strongly with t) and antithetic pairs (eps, -eps) cancel the part of the per-draw difference that
# is odd in eps, 2 eps·(eps_c - eps_null). Stratified + antithetic draws reach the published
# schedule's accuracy with fewer draws than 100, and 64 keeps a margin over the fewest that do: the
# measured correlations are in the benchmark record, benchmarks/results/typicality_convergence.json
# (written by benchmarks/typicality_convergence.py).
DEFAULT_DRAWS = 64


@dataclass
class TypicalityConfig(RuntimeSettings):
    model: str = option(None, "finetuned diffusers SD folder (or 'tiny', a hub id)", required=True)
    data: str = option(None, "image folder: a folder per label, or metadata.csv/jsonl", required=True)
    out: str = option(None, "store folder (resumed when it holds a run with the same settings)", required=True)
    label_column: str = option(LABEL_COLUMN, "label column of metadata.csv/jsonl")
    skip_bad: bool = skip_bad_option()
    draws: int = option(DEFAULT_DRAWS, "(t, eps) draws per image; --draws 100 --schedule uniform "
                        "--no-antithetic is the published schedule", source="docs/method.md §2: 100", resume_key=True)
    t_range: tuple[float, float] = option(PUBLISHED_T_RANGE, "timestep range as fractions of T (0 1: all of it)",
                                          source="docs/method.md §2", resume_key=True, metavar=("LOW", "HIGH"))
    labels: str = option("own", "'own': each image for its own label(s); 'all': for every label (image x label "
                         "matrix)", choices=("own", "all"), resume_key=True)
    schedule: str = option("stratified", "timesteps: one per stratum of the range, or uniform i.i.d.",
                           choices=SCHEDULES, resume_key=True)
    antithetic: bool = option(True, "draw noise in (eps, -eps) pairs", resume_key=True)
    sample_latents: bool = option(False, "seeded VAE posterior sample instead of its mean", resume_key=True)
    resolution: int | None = option(None, "processing size in px (default: the model's)", resume_key=True)
    seed: int = option(0, "seed of the per-image draws", resume_key=True)
    batch_size: int = option(64, "UNet rows per forward (an image's draw takes 1 + its labels)")
    group: int = option(16, "images per unit of work: decoded and batched together, dealt out to the processes "
                        "of `accelerate launch`; shards end at group ends (a kill loses at most a group)")
    shard_size: int = option(256, "images per store shard: a kill loses at most the images since the last shard")
    shard_seconds: float = option(60.0, "also write a shard at the first group end after this many seconds (bounds "
                                  "what a kill loses; 0: at every group's end)")
    force: bool = option(False, "score labels the model was not trained on (with a warning)")

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        for name in ("labels", "schedule"):
            check_choice(self, name)
        check_positive(self, ("draws", "batch_size", "group", "shard_size", "resolution"))
        check_positive(self, ("shard_seconds",), minimum=0)
        check_t_range(self.t_range)
