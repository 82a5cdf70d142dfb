"""Checkpoints of a training run: written atomically, found again on --resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from diffmine.core.files import write_json

KEEP = 2  # older checkpoints are deleted once a newer one is complete


def latest(out: str | Path) -> tuple[Path, int] | None:
    pointer = Path(out, "checkpoints", "latest.json")
    if not pointer.exists():
        return None
    info = json.loads(pointer.read_text())
    path = Path(out, "checkpoints", info["dir"])
    return (path, int(info["step"])) if path.is_dir() else None


def save(accelerator: Accelerator, out: str | Path, step: int) -> Path:
    """accelerate.save_state into a temporary folder, renamed when complete; then the pointer moves."""
    root = Path(out, "checkpoints")
    name = f"step-{step:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_json(root / "latest.json", {"dir": name, "step": step})
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
