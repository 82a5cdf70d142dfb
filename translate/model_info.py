"""What identifies a model folder: its labels (diffmine_train.json) and a fingerprint of its weights.

The fingerprint lets `diffmine changes` refuse translations made with another model: the UNet
config, the prompt template, the weight file's size and its first MiB (weights of two trainings
differ there; hashing a 3.4 GB SD UNet whole would take longer than the check is worth).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

TRAIN_INFO = "diffmine_train.json"
_HEAD = 1 << 20


def model_labels(model: str | Path) -> list[str] | None:
    """The labels the model was trained on, or None when the folder does not say (not a diffmine model)."""
    path = Path(model, TRAIN_INFO)
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, json.JSONDecodeError):
        return None
    return [str(x) for x in labels] if labels else None


def model_fingerprint(model: str | Path) -> str:
    h = hashlib.sha256()
    root = Path(model)
    for name in ("unet/config.json", "diffmine_prompts.json"):
        p = root / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"-"))
    weights = sorted((root / "unet").glob("*.safetensors")) + sorted((root / "unet").glob("*.bin"))
    for p in weights:
        h.update(p.name.encode() + str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            h.update(f.read(_HEAD))
    return h.hexdigest()[:16]
