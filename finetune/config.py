"""The finetuner's settings (`diffmine finetune`), each default once, with its source."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.runtime_settings import RuntimeSettings
from diffmine.core.settings import (LABEL_COLUMN, check, check_choice, check_positive, check_range, check_required,
                                     option, skip_bad_option)
from diffmine.core.models import DEFAULT_BASE, SCRATCH_BASE
from diffmine.core.prompts import NULL_RATE, PRESETS, PromptTemplate, resolve_prompts

SCRATCH_VAE_STEPS = 1000  # tiny-scratch trains its VAE this long before the UNet
ADAPT_VAE_STEPS = 3000    # the fast autoencoder on the user's images (finetune/vae_adapt.py): ~5 min on 2 cores. On the
                          # broad generators 29.3 dB at step 2000 of 3000 and 30.3 at 3000; at 2000 steps the held-out
                          # shapes and textures fell just short of 26 dB (benchmarks/vae_adaptation.py, seed 1012)
VAE_ADAPT_MODES = ("auto", "always", "never")
# diffmine.core.autoencoders.FAST_DOWNSAMPLINGS, written out: that module imports torch, a config must not
ADAPT_VAE_DOWNSAMPLINGS = (4, 2)
EPOCHS = 100  # docs/method.md §1: ~100 epochs, when --max-steps is not given
# --mixed-precision (accelerate's names) is an alias of --dtype: the trained UNet's autocast precision
MIXED_PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}


def precision_of(values: dict) -> str:
    """The --dtype a finetune's settings ask for (a config's values, or a saved config.json of either era)."""
    alias = values.get("mixed_precision")
    return MIXED_PRECISION[alias] if alias is not None else values.get("dtype", "auto")


@dataclass
class TrainConfig(RuntimeSettings):
    """`resume_key` fields: what a resumed run must share with the checkpoint it continues (the rest may
    change: how long to train, how often to save, what to print). The precision is compared as
    `precision_of` makes it (--dtype, or its alias --mixed-precision), not as written."""
    data: str = option(None, "image folder: a folder per label, or metadata.csv/jsonl", required=True, resume_key=True)
    out: str = option(None, "output folder (a diffusers SD folder at the end)", required=True)
    base: str = option(DEFAULT_BASE, "model to finetune: diffusers SD folder, hub id, 'tiny' (the shipped pretrained "
                       "small SD), 'tiny-broad' (the small SD pretrained on the broad corpus: its autoencoder "
                       "keeps most images as they are) or 'tiny-scratch' (small SD from random weights: trains "
                       "its VAE first, slow)",
                       source="docs/method.md §1", resume_key=True)
    text_encoder: str | None = option(None, "swap in another CLIP text tower (hub id or folder)",
                                      source="docs/method.md §1", resume_key=True)
    label_column: str = option(LABEL_COLUMN, "label column of metadata.csv/jsonl", resume_key=True)
    skip_bad: bool = skip_bad_option()
    preset: str | None = option(None, "published prompts", choices=sorted(PRESETS), source="docs/method.md §1",
                                resume_key=True)
    prompt: str | None = option(None, "label prompt template with {label} (default: the preset's, else '{label}')",
                                resume_key=True)
    null_prompt: str | None = option(None, "prompt standing for 'no label' (default: the preset's, else '')",
                                     resume_key=True)
    null_rate: float | None = option(None, "fraction of samples given the null prompt; 1 trains a domain-only model "
                                     f"that never sees a label (default: the preset's, else {NULL_RATE})",
                                     source="docs/method.md §1", resume_key=True)
    resolution: int | None = option(None, "training image size in px (default: the base model's)", resume_key=True)
    batch_size: int = option(32, "images per step and process", source="docs/method.md §1: 8-64 per GPU",
                             resume_key=True)
    lr: float = option(1e-4, "AdamW learning rate (constant)", source="docs/method.md §1", resume_key=True)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", source="docs/method.md §1", resume_key=True)
    weight_decay: float = option(1e-2, "AdamW weight decay", source="docs/method.md §1", resume_key=True)
    adam_eps: float = option(1e-8, "AdamW epsilon", source="docs/method.md §1", resume_key=True)
    grad_clip: float = option(1.0, "gradient norm clipping", source="docs/method.md §1", resume_key=True)
    max_steps: int | None = option(None, "stop after this many steps (default: --epochs)")
    epochs: int | None = option(None, f"epochs when --max-steps is not given (default: {EPOCHS})", source="docs/method.md §1")
    max_minutes: float | None = option(None, "stop (with a checkpoint) after this many minutes")
    random_crop: bool = option(False, "augment with random crops (images decoded 1/8 larger, a random window "
                               "per sample)", source="docs/method.md §1")
    random_flip: bool = option(False, "augment with horizontal flips (each image's mirror encoded once beside it; "
                               "each sample of a step is mirrored with probability 1/2)", resume_key=True)
    adapt_vae: str = option("auto", "train a fast autoencoder on these images before the UNet (which learns its "
                            "latents): 'auto' when a small base's VAE reconstructs them below the guard's floor, "
                            "'always', or 'never'",
                            choices=VAE_ADAPT_MODES, source="docs/method.md §1", resume_key=True)
    adapt_vae_downsampling: int = option(ADAPT_VAE_DOWNSAMPLINGS[0], "pixels per latent pixel of the autoencoder --adapt-vae trains: 4 "
                                         "(the small base's) or 2 (latents twice as fine for elements of a few "
                                         "pixels; about 4x the UNet's compute)", choices=ADAPT_VAE_DOWNSAMPLINGS,
                                         source="benchmarks/planted_elements.py", resume_key=True)
    vae_steps: int | None = option(None, f"VAE training steps: {SCRATCH_VAE_STEPS} from scratch (tiny-scratch), "
                                   f"{ADAPT_VAE_STEPS} for the autoencoder --adapt-vae trains, when not given", resume_key=True)
    mixed_precision: str | None = option(None, "alias of --dtype in accelerate's names: no = fp32, fp16, bf16 "
                                         "(default: --dtype's)", choices=tuple(MIXED_PRECISION))
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet")
    ema: bool = option(False, "export an exponential moving average of the weights", resume_key=True)
    ema_decay: float = option(0.999, "EMA decay", resume_key=True)
    lora_rank: int = option(0, "train LoRA adapters of this rank instead of the full UNet (0: full finetune)",
                            resume_key=True)
    checkpoint_every: int = option(500, "steps between atomic checkpoints")
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    seed: int = option(0, "seed of every random draw (data order, noise, timesteps, null prompts)",
                       resume_key=True)
    samples_per_label: int = option(4, "samples per label in samples.png (0: none)")
    log_every: int = option(10, "steps per line of train_log.jsonl")

    @property
    def epochs_or_default(self) -> int:
        return self.epochs or EPOCHS

    def prompt_template(self) -> PromptTemplate:
        return resolve_prompts(self.preset, self.prompt, self.null_prompt, self.null_rate)

    @property
    def precision(self) -> str:
        """The --dtype this run trains in (--mixed-precision, when given, names it)."""
        return precision_of({"dtype": self.dtype, "mixed_precision": self.mixed_precision})

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        check(self.process_index is None and self.num_processes is None, "num_processes",
              "the finetuner's processes are accelerate's (`accelerate launch`); it simulates no split")
        check_choice(self, "preset")
        check_choice(self, "mixed_precision")
        check(self.mixed_precision is None or self.dtype in ("auto", self.precision), "mixed_precision",
              f"{self.mixed_precision} asks for {self.precision}, --dtype for {self.dtype}: give one of them")
        check_positive(self, ("batch_size", "max_steps", "epochs", "checkpoint_every", "log_every"))
        check_positive(self, ("lora_rank", "samples_per_label", "vae_steps"), minimum=0)
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.max_minutes is None or self.max_minutes > 0, "max_minutes", f"must be > 0, got {self.max_minutes}")
        check_range(self, "null_rate", 0.0, 1.0)
        check_range(self, "ema_decay", 0.0, 1.0, closed="left")
        if self.resolution is not None:
            check(self.resolution >= 8 and self.resolution % 8 == 0, "resolution",
                  f"must be a multiple of 8 px, got {self.resolution}")
        check(self.prompt is None or "{label}" in self.prompt, "prompt",
              f"must contain the placeholder {{label}}, got {self.prompt!r}")
        check_choice(self, "adapt_vae")
        check_choice(self, "adapt_vae_downsampling")
        check(self.vae_steps is None or self.base == SCRATCH_BASE or self.adapt_vae != "never", "vae_steps",
              f"only applies to --base {SCRATCH_BASE} or an adapted VAE, not with --adapt-vae never")
