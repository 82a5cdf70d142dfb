"""The typicality store: running-mean maps at latent resolution, in checksummed shards.

Layout of a store folder:

    manifest.json                     meta, labels, and one entry per shard (merged at the end of a run)
    manifest.part-r{i}-n{n}.json      shards written by process i of n, not merged yet (a run in progress
                                      or killed); readers take the union with manifest.json
    shard-r{i}-n{n}-{seq}.safetensors err_null (I, h, w), diff (P, h, w), err_cond (P, h, w) float32

A shard entry lists its file, sha256, images and each image's labels (P = pairs, one per
(image, label)). Every file is written to a temporary name and renamed into place, and a
shard is listed only after its file is complete, so a killed run leaves a consistent store
that a new run with the same settings resumes. The null branch's mean error does not depend on
the label, so it is kept once per image: it is the reconstruction error the anomaly scores use.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as st_load

from diffmine.core.files import safetensors_bytes, write_bytes, write_json
from diffmine.core.partial import key_digest
from diffmine.core.errors import DataError

from typicality.fingerprints import is_legacy
from typicality.formula import upsample

FORMAT, VERSION = "diffmine-typicality", 1
MANIFEST = "manifest.json"
_PART_RE = re.compile(r"^manifest\.part-r(\d+)-n(\d+)\.json$")
ALL = "*"  # an entry's labels when every image in it was scored for every store label


def recorded_map_keys(meta: dict) -> list[str]:
    """The meta keys that must match for two runs to share a store: the run lists them itself
    (the config fields marked `resume_key`, plus what the model and the data fix)."""
    return list(meta.get("map_keys") or [])


def settings_digest(meta: dict) -> str:
    """A digest of what the maps depend on (the recorded map keys): each shard carries it, so shards
    that lost their manifest can be taken back by a run with the same settings."""
    return key_digest({k: meta.get(k) for k in recorded_map_keys(meta)})


@dataclass
class ImageResult:
    """One image's running means: one row per label in `labels`."""
    image_id: str
    labels: list[str]
    diff: np.ndarray      # (L, h, w) mean of err_null - err_cond
    err_null: np.ndarray  # (h, w)    mean error with the null prompt (reconstruction error)
    err_cond: np.ndarray  # (L, h, w) mean error with each label's prompt


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable typicality manifest ({type(exc).__name__}: {exc}); delete this file and "
                        "re-run `diffmine typicality` with the same --out: it rebuilds the manifest from the shards") \
            from None
    if obj.get("format") != FORMAT:
        raise DataError(f"{path}: not a diffmine typicality manifest")
    return obj


def read_manifests(root: str | Path) -> tuple[dict, list[str], list[dict]] | None:
    """(meta, labels, shard entries) from manifest.json plus unmerged part files; None for an empty folder."""
    root = Path(root)
    files = [root / MANIFEST] if (root / MANIFEST).exists() else []
    files += sorted(p for p in root.glob("manifest.part-*.json") if _PART_RE.match(p.name)) if root.is_dir() else []
    if not files:
        return None
    meta = labels = None
    entries: dict[str, dict] = {}  # file name -> entry: the last file to list a shard wins (parts are newer)
    for path in files:
        obj = _read_json(path)
        if meta is None:
            meta, labels = obj["meta"], obj["labels"]
        elif any(obj["meta"].get(k) != meta.get(k)
                 for k in set(recorded_map_keys(meta)) | set(recorded_map_keys(obj["meta"]))):
            raise DataError(f"{path}: written by a run with other settings than {files[0].name}")
        for e in obj["shards"]:
            entries.pop(e["file"], None)
            entries[e["file"]] = e
    return meta, labels, list(entries.values())


def check_resumable(root: Path, meta: dict) -> None:
    """Raise DataError if `root` holds a store computed with settings other than `meta`."""
    found = read_manifests(root)
    if found is None:
        return
    diff = sorted(k for k in set(recorded_map_keys(found[0])) | set(recorded_map_keys(meta)) if k != "map_keys"
                  and found[0].get(k) != meta.get(k))
    if "data_fingerprint" in diff and is_legacy(found[0].get("data_fingerprint")):
        raise DataError(f"{root}: written by an earlier diffmine whose data fingerprint covers file sizes, not "
                        "content, so it cannot be resumed safely; use another --out, or delete it to recompute "
                        "(`diffmine mine` still reads it, with a warning)")
    if diff:
        details = "; ".join(f"{k}: {found[0].get(k)!r} there, {meta.get(k)!r} now" for k in diff)
        raise DataError(f"{root}: holds typicality maps computed with other settings ({details}); "
                        "use another --out or the same settings to resume")


def _entry_labels(entry: dict, labels: list[str]) -> list[list[str]]:
    return [list(labels)] * len(entry["images"]) if entry["labels"] == ALL else entry["labels"]


def load_shard(path: Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """A shard's arrays, after checking its checksum; DataError naming the file if it is damaged."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: typicality shard missing or unreadable ({exc.strerror}); delete its "
                        "entry by re-running `diffmine typicality` with the same --out") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path}: damaged typicality shard (sha256 does not match the manifest); delete "
                        "this file and re-run `diffmine typicality` with the same --out to recompute its images")
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise DataError(f"{path}: damaged typicality shard ({type(exc).__name__}: {exc})") from None


def verify_shards(root: str | Path) -> None:
    """Check every listed shard whose file exists (missing files are recomputed by a resumed run)."""
    found = read_manifests(root)
    for e in found[2] if found else []:
        if (Path(root) / e["file"]).exists():
            load_shard(Path(root) / e["file"], e["sha256"])


def finished_images(root: str | Path) -> set[str]:
    """Ids of images stored in a shard whose file is present."""
    found = read_manifests(root)
    return {i for e in (found[2] if found else []) if (Path(root) / e["file"]).exists() for i in e["images"]}


class ShardWriter:
    """Buffers finished images and writes them as shards of one process (rank of world)."""

    def __init__(self, root: str | Path, meta: dict, labels: list[str], rank: int = 0, world: int = 1,
                 shard_size: int = 256, flush_seconds: float = 60.0, grouped: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta, self.labels = meta, list(labels)
        self.prefix = f"shard-r{rank}-n{world}-"
        self.part = self.root / f"manifest.part-r{rank}-n{world}.json"
        self.entries = _read_json(self.part)["shards"] if self.part.exists() else []
        found = read_manifests(self.root)
        names = {p.name for p in self.root.glob(self.prefix + "*.safetensors")}
        names |= {e["file"] for e in found[2]} if found else set()
        used = [int(m.group(1)) for name in names
                if (m := re.match(re.escape(self.prefix) + r"(\d+)\.safetensors$", name))]
        # never reuse a name, listed or orphaned, present or deleted: a recomputed shard is a new file
        self.seq = max(used, default=-1) + 1
        # A shard every `shard_size` images or `flush_seconds`, whichever comes first: a kill loses
        # at most about that much work. merge_manifests compacts the small ones at the end. `grouped`:
        # a shard ends only at a group's end (`end_group`), so a resumed run redoes whole groups.
        self.shard_size, self.flush_seconds, self.grouped = int(shard_size), float(flush_seconds), grouped
        self.buffer: list[ImageResult] = []
        self.last_flush = time.monotonic()

    def add(self, result: ImageResult) -> None:
        self.buffer.append(result)
        if not self.grouped:
            self._flush_if_due()

    def end_group(self) -> None:
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if len(self.buffer) >= self.shard_size or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        res, self.buffer = self.buffer, []
        arrays = {
            "err_null": np.stack([r.err_null for r in res]).astype(np.float32),
            "diff": np.concatenate([r.diff for r in res]).astype(np.float32),
            "err_cond": np.concatenate([r.err_cond for r in res]).astype(np.float32),
        }
        name = f"{self.prefix}{self.seq:05d}.safetensors"
        self.seq += 1
        self.entries.append(_write_shard(self.root / name, arrays, [r.image_id for r in res],
                                         [list(r.labels) for r in res], self.meta, self.labels))
        write_json(self.part, {"format": FORMAT, "version": VERSION, "meta": self.meta, "labels": self.labels,
                               "shards": self.entries}, indent=1)

    def close(self) -> None:
        self.flush()


def _write_shard(path: Path, arrays: dict[str, np.ndarray], images: list[str], labels: list[list[str]],
                 meta: dict, store_labels: list[str]) -> dict:
    """Write one shard file (atomically) and return its manifest entry."""
    data = safetensors_bytes(arrays, {"format": FORMAT, "images": json.dumps(images), "labels": json.dumps(labels),
                                      "settings": settings_digest(meta)})
    write_bytes(path, data)  # the file first, then the entry that lists it
    compact = ALL if meta.get("labels") == "all" and all(l == store_labels for l in labels) else labels
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "images": images, "labels": compact}


def _compact(root: Path, entries: list[dict], labels: list[str], meta: dict, target: int) -> list[dict]:
    """Small shards (time-based flushes, resumed runs) folded into shards of up to `target` images.

    New files are written first and listed by the caller's manifest; the old ones are deleted
    only after it, so a kill in between leaves a readable store."""
    small = [e for e in entries if len(e["images"]) < target]
    if len(small) < 2:
        return entries
    out = [e for e in entries if len(e["images"]) >= target]
    seq = max([int(m.group(1)) for p in root.glob("shard-c-*.safetensors")
               if (m := re.match(r"shard-c-(\d+)\.safetensors$", p.name))], default=-1) + 1
    group: list[dict] = []
    for e in small + [None]:
        if e is not None and sum(len(g["images"]) for g in group) + len(e["images"]) <= target:
            group.append(e)
            continue
        if len(group) > 1:
            parts = [load_shard(root / g["file"], g["sha256"]) for g in group]
            arrays = {k: np.concatenate([a[k] for a in parts]) for k in ("err_null", "diff", "err_cond")}
            images = [i for g in group for i in g["images"]]
            labs = [lab for g in group for lab in _entry_labels(g, labels)]
            out.append(_write_shard(root / f"shard-c-{seq:05d}.safetensors", arrays, images, labs, meta, labels))
            seq += 1
        elif group:
            out.append(group[0])
        group = [e] if e is not None else []
    return out


def recover_orphans(root: str | Path, meta: dict, labels: list[str], rank: int = 0, world: int = 1) -> int:
    """List again the shards no manifest lists (a deleted or unreadable manifest) whose settings digest
    is this run's: they go into this process's part file, checksummed as they are. Returns how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    found = read_manifests(root)
    listed = {e["file"] for e in found[2]} if found else set()
    want, recovered = settings_digest(meta), []
    for p in sorted(root.glob("shard-*.safetensors")):
        if p.name in listed:
            continue
        try:
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                head = json.loads(f.read(n))["__metadata__"]
            if head.get("settings") != want:
                continue  # another run's (or an older diffmine's) shard: recomputed instead
            data = p.read_bytes()
            st_load(data)  # whole and readable
        except Exception:  # noqa: BLE001 - a damaged orphan is recomputed like a missing one
            continue
        images, labs = json.loads(head["images"]), json.loads(head["labels"])
        compact = ALL if meta.get("labels") == "all" and all(lab == labels for lab in labs) else labs
        recovered.append({"file": p.name, "sha256": hashlib.sha256(data).hexdigest(), "images": images,
                          "labels": compact})
    if recovered:
        part = root / f"manifest.part-r{rank}-n{world}.json"
        before = _read_json(part)["shards"] if part.exists() else []
        write_json(part, {"format": FORMAT, "version": VERSION, "meta": meta, "labels": list(labels),
                          "shards": before + recovered}, indent=1)
    return len(recovered)


def merge_manifests(root: str | Path, compact_to: int | None = None) -> Path:
    """Fold every process's part file into manifest.json (main process, after all have finished);
    with `compact_to`, shards smaller than that are merged into shards of up to that many images."""
    root = Path(root)
    found = read_manifests(root)
    if found is None:
        raise DataError(f"{root}: no typicality shards to merge")
    meta, labels, entries = found
    kept, seen = [], set()
    for e in entries:  # entries whose file was deleted go (their images were recomputed or are due)
        if not (root / e["file"]).exists():
            continue
        if seen.intersection(e["images"]):
            raise DataError(f"{root / e['file']}: holds images already stored in another shard")
        seen.update(e["images"])
        kept.append(e)
    if compact_to:
        kept = _compact(root, kept, labels, meta, int(compact_to))
    write_json(root / MANIFEST, {"format": FORMAT, "version": VERSION, "meta": meta, "labels": labels,
                                 "shards": kept}, indent=1)
    listed = {e["file"] for e in kept}
    for p in root.iterdir():  # parts are merged; orphans are shards a kill left unlisted
        if _PART_RE.match(p.name) or (p.suffix == ".safetensors" and p.name.startswith("shard-")
                                      and p.name not in listed) or p.name.startswith(".shard-") \
                or p.name.startswith(".manifest"):
            p.unlink(missing_ok=True)
    return root / MANIFEST


class TypicalityStore:
    """Read access to a typicality store; maps come back as float32 numpy arrays."""

    def __init__(self, root: Path, meta: dict, labels: list[str], entries: list[dict], cache_shards: int = 8):
        self.root, self.meta, self.labels = root, meta, list(labels)
        self._entries = entries
        self._where: dict[str, tuple[int, int, int, list[str]]] = {}  # id -> (entry, image row, first pair row, labels)
        for k, e in enumerate(entries):
            pair = 0
            for row, (image_id, labs) in enumerate(zip(e["images"], _entry_labels(e, labels))):
                self._where.setdefault(image_id, (k, row, pair, labs))
                pair += len(labs)
        self.image_ids: list[str] = sorted(self._where)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = cache_shards
        self._scores: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> "TypicalityStore":
        path = Path(path)
        found = read_manifests(path)
        if found is None:
            raise DataError(f"{path}: not a typicality store (no {MANIFEST}); run `diffmine typicality` first")
        return cls(path, *found)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def pairs(self) -> list[tuple[str, str]]:
        return [(i, lab) for i in self.image_ids for lab in self._where[i][3]]

    def labels_of(self, image_id: str) -> list[str]:
        return list(self._locate(image_id)[3])

    # -- shards ---------------------------------------------------------------------------
    def _locate(self, image_id: str):
        try:
            return self._where[image_id]
        except KeyError:
            raise KeyError(f"{self.root}: no typicality for image '{image_id}'") from None

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        e = self._entries[k]
        arrays = load_shard(self.root / e["file"], e["sha256"])
        self._cache[k] = arrays
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arrays

    def _pair(self, image_id: str, label: str) -> tuple[dict[str, np.ndarray], int, int]:
        k, row, first, labs = self._locate(image_id)
        if label not in labs:
            raise KeyError(f"{self.root}: image '{image_id}' was not scored for label '{label}' "
                           f"(scored: {', '.join(labs)})")
        return self._shard(k), row, first + labs.index(label)

    # -- maps -----------------------------------------------------------------------------
    def latent_map(self, image_id: str, label: str) -> np.ndarray:
        """Mean typicality (h, w) at latent resolution; positive where the label helps denoising."""
        shard, _, p = self._pair(image_id, label)
        return shard["diff"][p].copy()

    def error_maps(self, image_id: str, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(err_null, err_cond), each (h, w): mean squared noise-prediction errors of both branches."""
        shard, row, p = self._pair(image_id, label)
        return shard["err_null"][row].copy(), shard["err_cond"][p].copy()

    def map(self, image_id: str, label: str, size: tuple[int, int] | int | None = None) -> np.ndarray:
        """Typicality (H, W) at pixel resolution: bilinear upsampling of the latent map (docs/method.md §2).

        size defaults to the processing resolution (the square crop the model saw); any (H, W) works.
        """
        if size is None:
            size = self.meta["resolution"]
        if isinstance(size, int):
            size = (size, size)
        return upsample(torch.from_numpy(self.latent_map(image_id, label)), size).numpy()

    def scores(self, label: str | None = None) -> np.ndarray:
        """Mean typicality per image, rows in `image_ids` order; NaN where a pair was not scored.

        With a label: (n_images,). Without: (n_images, n_labels) in `labels` order; with
        --labels all this is the full image x label score matrix (the diffusion-classifier view).
        """
        if self._scores is None:
            col = {lab: j for j, lab in enumerate(self.labels)}
            out = np.full((len(self.image_ids), len(self.labels)), np.nan, np.float32)
            rows = {i: n for n, i in enumerate(self.image_ids)}
            for k, e in enumerate(self._entries):
                means = None
                for image_id, labs in zip(e["images"], _entry_labels(e, self.labels)):
                    kk, _, first, _ = self._where[image_id]
                    if kk != k:
                        continue
                    if means is None:
                        means = self._shard(k)["diff"].mean(axis=(1, 2))
                    for j, lab in enumerate(labs):
                        out[rows[image_id], col[lab]] = means[first + j]
            self._scores = out
        if label is None:
            return self._scores.copy()
        if label not in self.labels:
            raise KeyError(f"{self.root}: unknown label '{label}' (labels: {', '.join(self.labels)})")
        return self._scores[:, self.labels.index(label)].copy()
