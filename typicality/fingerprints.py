"""Cheap identities of a model and of a dataset, so maps are never read against the wrong ones.

A store records both; `diffmine typicality` resumes and `diffmine mine` reads a store only
when they match (or with --force). Neither reads whole files: a model by its UNet config and
the size, head and tail of its weight files; a dataset by each image's id, labels and file
size (a re-encoded or replaced image changes its size in practice).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

_EDGE = 1 << 20  # bytes read from each end of a weight file


def model_fingerprint(model: str | Path) -> str:
    """sha256 over the UNet's config and weight files (size, first and last MiB); a hub id as itself."""
    unet = Path(str(model), "unet")
    if not unet.is_dir():
        return f"id:{model}"
    h = hashlib.sha256()
    for f in sorted(p for p in unet.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_EDGE))
            if size > 2 * _EDGE:
                fh.seek(size - _EDGE)
                h.update(fh.read(_EDGE))
    return h.hexdigest()[:16]


def data_fingerprint(records: Iterable, root: str | Path | None = None) -> str:
    """sha256 over (image id, labels, file size) of every record, in id order."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.image_id):
        size = Path(r.path).stat().st_size if Path(r.path).exists() else -1
        h.update(f"{r.image_id}\0{'|'.join(r.labels)}\0{size}\n".encode())
    return h.hexdigest()[:16]
