"""Atomic writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move a fully written folder into place, removing what was there."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
