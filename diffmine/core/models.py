"""Which model a name means: one loader for "tiny", "tiny-broad", "tiny-scratch", a local folder or a hub id.

    load_bundle("stable-diffusion-v1-5/stable-diffusion-v1-5")  # docs/method.md §1, on a GPU
    load_bundle("runs/my-model")                                # a diffusers SD folder
    load_bundle("tiny")          # the shipped, pretrained small SD (assets/tiny-towns-model)
    load_bundle("tiny-broad")    # the small SD pretrained on the broad corpus (assets/tiny-broad-model,
                                 # `make assets RECIPE=broad`): a fast autoencoder that keeps most images
    load_bundle("tiny-scratch")  # the same architecture with random weights (the trainer
                                 # trains its VAE first: slow, only on purpose)

A name that cannot be any of these fails at once with one line, before any network call:
a mistyped folder is not sent to the hub as a repo id. A name that could be a hub id (owner/name,
not a local folder) is asked of the hub once, quickly and without retries, unless it is in the
local cache: no answer or "no such repository" is one line, not minutes of retries.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from diffmine.core.errors import DataError

# docs/method.md §1: `runwayml/stable-diffusion-v1-5` was removed from the hub in 2024.
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the repository's assets/ (shipped model, recipe)
SMALL_BASE = "tiny"
SCRATCH_BASE = "tiny-scratch"
SMALL_BASE_DIR = ASSETS / "tiny-towns-model"
# the small bases a name stands for, each with the `make assets` recipe that builds it
SMALL_BASES = {SMALL_BASE: (SMALL_BASE_DIR, "towns"), "tiny-broad": (ASSETS / "tiny-broad-model", "broad")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(name: str | Path, what: str = "model") -> str:
    """The folder or hub id that `name` stands for, or one DataError line saying why it is none.

    `what` names the option in messages ("base", "model")."""
    spec = str(name).strip()
    if spec in SMALL_BASES:
        folder, recipe = SMALL_BASES[spec]
        if not (folder / "model_index.json").exists():
            make = "make assets" + ("" if recipe == "towns" else f" RECIPE={recipe}")
            raise DataError(f"{what} {spec}: the shipped small model {folder} is missing (rebuild it with `{make}`)")
        return str(folder)
    if spec == SCRATCH_BASE:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    # ./ ../ / ~, a separator at the end, more than one slash, or an existing parent: a path, never a hub id
    looks_like_path = (spec.startswith((".", "/", "~")) or "\\" in spec or spec.endswith(("/", os.sep))
                       or spec.count("/") != 1 or Path(spec).parent.is_dir())
    if looks_like_path or not _HUB_ID.match(spec):
        raise DataError(f"{what} {spec}: no such folder, and not a hub id (owner/name) or a small base "
                        f"({', '.join([*SMALL_BASES, SCRATCH_BASE])})")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "model_index.json"), str):
        return spec  # downloaded before: the loader reads the cache
    if _offline():
        raise DataError(f"{what} {spec}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    _ask_hub(spec, what)
    return spec


HUB_TIMEOUT_S = 10.0  # one request; the downloads that follow have the hub library's own retries


def _ask_hub(spec: str, what: str) -> None:
    """One quick request (model_info does not retry): DataError in one line when the hub has no such model."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(spec, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - network, not found, gated: all become one line
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{what} {spec}: not a local folder; the hub answered {type(exc).__name__}"
                        + (f": {reason}" if reason else "") + " (set HF_HUB_OFFLINE=1 to use the local cache only)") \
            from None
    files = {s.rfilename for s in (info.siblings or [])}
    if files and "model_index.json" not in files:
        raise DataError(f"{what} {spec}: not a local folder; the hub has it, but not as a diffusers pipeline "
                        "(no model_index.json)")


def load_bundle(name: str | Path, text_encoder: str | None = None, **kwargs):
    """The SD components `name` stands for (see the module docstring)."""
    spec = resolve_model(name)
    if spec == SCRATCH_BASE:
        from diffmine.core.tiny import build_tiny_bundle

        return build_tiny_bundle(**kwargs)
    from diffmine.core.bundle import SDBundle

    if text_encoder is not None:
        text_encoder = resolve_model(text_encoder, "text encoder")
    return SDBundle.from_pretrained(spec, text_encoder=text_encoder, **kwargs)


def model_labels(name: str | Path) -> list[str] | None:
    """The labels a diffmine-finetuned folder was trained on (None when it does not say)."""
    import json

    info = Path(str(name), "diffmine_train.json")
    if not info.is_file():
        return None
    return list(json.loads(info.read_text(encoding="utf-8")).get("labels") or []) or None


def model_resolution(name: str | Path) -> int | None:
    """The image size a model folder was built for, from its UNet and VAE configs without loading any
    weights (None when `name` is not a folder with both)."""
    import json

    from diffmine.core.bundle import image_size

    folder = Path(resolve_model(name))
    try:
        unet, vae = (json.loads((folder / part / "config.json").read_text(encoding="utf-8")) for part in ("unet", "vae"))
        return image_size(unet["sample_size"], vae)
    except (OSError, ValueError, KeyError, TypeError):
        return None
