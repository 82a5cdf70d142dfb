"""Cheap identities of a model and of a dataset, so maps are never read against the wrong ones.

A store records both; `diffmine typicality` resumes and `diffmine mine` reads a store only
when they match (or with --force). A model by its UNet config and the size, head and tail of
its weight files; a dataset by each image's id, labels and content: a BLAKE2b hash of the file's
bytes, so changed pixels in a file of the same size (an uncompressed PNG, a DICOM) are caught.
The hashes are kept in a small per-user cache keyed by path, size and mtime, so a rerun reads
only the files that changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

CONTENT_PREFIX = "b2:"  # data fingerprints over file content; older stores hold ids, labels and sizes only

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


def cache_dir() -> Path:
    """Where diffmine keeps small per-user caches: $DIFFMINE_CACHE, else $XDG_CACHE_HOME/diffmine."""
    if os.environ.get("DIFFMINE_CACHE"):
        return Path(os.environ["DIFFMINE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "diffmine"


class ContentHashes:
    """BLAKE2b of files, remembered by (absolute path, size, mtime_ns) in one small JSON file per data folder."""

    def __init__(self, root: str | Path | None):
        key = hashlib.sha256(str(Path(root or ".").resolve()).encode()).hexdigest()[:16]
        self.file = cache_dir() / "content-hashes" / f"{key}.json"
        try:
            self.known = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.known = {}  # no cache yet, or a damaged one: hashes are recomputed
        self.changed = False

    def of(self, path: str | Path) -> str:
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError:
            return "missing"
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self.known.get(str(path))
        if isinstance(hit, list) and hit[:2] == stamp:
            return hit[2]
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.known[str(path)] = [*stamp, h.hexdigest()]
        self.changed = True
        return h.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        from diffmine.core.files import write_json

        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.file, self.known, indent=None)
        except OSError:
            pass  # a read-only home: the fingerprint is right, only the next run hashes again


def data_fingerprint(records: Iterable, root: str | Path | None = None) -> str:
    """"b2:" + sha256 over (image id, labels, BLAKE2b of the file) of every record, in id order."""
    hashes = ContentHashes(root)
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.image_id):
        h.update(f"{r.image_id}\0{'|'.join(r.labels)}\0{hashes.of(r.path)}\n".encode())
    hashes.save()
    return CONTENT_PREFIX + h.hexdigest()[:16]


def is_legacy(fingerprint: str | None) -> bool:
    """A data fingerprint of a store written before content hashes (ids, labels and file sizes)."""
    return bool(fingerprint) and not str(fingerprint).startswith(CONTENT_PREFIX)


def legacy_data_fingerprint(records: Iterable) -> str:
    """The fingerprint older stores hold: sha256 over (image id, labels, file size), in id order."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.image_id):
        size = Path(r.path).stat().st_size if Path(r.path).exists() else -1
        h.update(f"{r.image_id}\0{'|'.join(r.labels)}\0{size}\n".encode())
    return h.hexdigest()[:16]
