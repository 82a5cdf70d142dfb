"""Finished work kept on disk: per-item arrays in shards, split over processes, resumable.

A long command computes its items in fixed groups (the same groups whatever the process count),
hands group k to process k % world, and writes each finished group as one shard:

    <folder>/key.json                     what the results depend on (a run with other settings refuses it)
    <folder>/part-r{rank}-{seq}.safetensors   the arrays of one group's items, ids in the metadata

A shard is written to a temporary name and renamed, so a killed run leaves only whole shards; the
next run with the same key skips every group whose items are all stored. The main process reads
every shard once all processes are done (`PartialResults.read_all`). Each item is computed inside
its own group's batch, so the results are the same bit for bit for one process or many.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from safetensors.numpy import load_file

from diffmine.core.errors import DataError
from diffmine.core.files import safetensors_bytes, write_bytes, write_json

KEY_FILE = "key.json"
_PART = re.compile(r"^part-r(\d+)-(\d+)\.safetensors$")
Arrays = dict[str, np.ndarray]


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialResults:
    """The shards of one computation (`key`) in `folder`, as seen by process `rank`."""

    def __init__(self, folder: str | Path, key: dict, rank: int = 0):
        self.folder, self.key, self.rank = Path(folder), dict(key), int(rank)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / KEY_FILE
        if key_file.exists():
            try:
                found = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                found = None  # a kill while writing it: the folder holds nothing usable yet
            if found is not None and found != json.loads(json.dumps(self.key, default=str)):
                raise DataError(f"{self.folder}: holds partial results of a run with other settings; "
                                "delete it or use the same settings to resume")
        if self.rank == 0 and not key_file.exists():
            write_json(key_file, self.key)
        used = [int(m.group(2)) for p in self.folder.iterdir() if (m := _PART.match(p.name)) and int(m.group(1)) == rank]
        self.seq = max(used, default=-1) + 1

    def _shards(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if _PART.match(p.name))

    def done(self) -> set[str]:
        """Ids of every stored item (any process's)."""
        ids = set()
        for p in self._shards():
            ids.update(self._ids(p))
        return ids

    @staticmethod
    def _ids(path: Path) -> list[str]:
        with open(path, "rb") as f:  # the safetensors header: 8-byte length, then JSON
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return json.loads(header["__metadata__"]["ids"])

    def add(self, results: dict[str, Arrays]) -> None:
        """Store one finished group: item id -> its named arrays."""
        if not results:
            return
        ids = list(results)
        arrays = {f"{n}/{name}": np.ascontiguousarray(a) for n, i in enumerate(ids) for name, a in results[i].items()}
        data = safetensors_bytes(arrays, {"ids": json.dumps(ids)})
        write_bytes(self.folder / f"part-r{self.rank}-{self.seq:06d}.safetensors", data)
        self.seq += 1

    def read_all(self) -> dict[str, Arrays]:
        """Every stored item's arrays (the first shard holding an id wins)."""
        out: dict[str, Arrays] = {}
        for p in self._shards():
            try:
                arrays = load_file(str(p))
            except Exception as exc:  # safetensors raises its own types for a damaged file
                raise DataError(f"{p}: damaged partial-results shard ({type(exc).__name__}); delete it and "
                                "re-run to recompute its items") from None
            for n, i in enumerate(self._ids(p)):
                if i not in out:
                    prefix = f"{n}/"
                    out[i] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        return out

    def remove(self) -> None:
        """Delete these results, and the folder of partial results when no other computation's are left in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass


def run_groups(groups: Sequence[Sequence[str]], compute: Callable[[Sequence[str]], dict[str, Arrays]],
               store: PartialResults, runtime, bar=None, on_group: Callable[[int], None] | None = None) -> None:
    """Compute this process's share of `groups` (group k goes to process k % world), skipping the
    groups whose items are all stored; each finished group is stored before the next starts."""
    done = store.done()
    if runtime.is_main:
        say_resuming(sum(i in done for g in groups for i in g), sum(map(len, groups)), store.folder.parent)
    mine = [g for k, g in enumerate(groups) if k % runtime.world == runtime.rank]
    if bar is not None and runtime.world > 1:  # the bar counts this process's share, the only one it advances
        bar.reset(total=sum(map(len, mine)))
        label = getattr(bar, "desc", "") or "items"  # a disabled bar has no desc
        bar.set_description_str(f"{label} (process {runtime.rank + 1} of {runtime.world})", refresh=False)
    for n, group in enumerate(mine):
        if all(i in done for i in group):
            if bar is not None:
                bar.update(len(group))
            continue
        results = compute(group)
        missing = [i for i in group if i not in results]
        if missing:
            raise RuntimeError(f"a group's computation returned no result for {missing[:3]}")
        store.add({i: results[i] for i in group})
        if bar is not None:
            bar.update(len(group))
        if on_group is not None:
            on_group(n)


def say_resuming(stored: int, total: int, where, note: str = "") -> None:
    """The one line of a rerun after a kill: what it reuses (nothing said when nothing is stored)."""
    if stored:
        from tqdm.auto import tqdm

        tqdm.write(f"resuming: {stored} of {total} images already stored in {where}{note}")


def compute_groups(groups: Sequence[Sequence[str]], compute: Callable[[Sequence[str]], dict[str, Arrays]],
                   store: PartialResults, runtime, bar=None, on_group: Callable[[int], None] | None = None
                   ) -> dict[str, Arrays] | None:
    """`run_groups`, then `collect` every group's items: on the main process of a complete run,
    every item's arrays; None elsewhere."""
    run_groups(groups, compute, store, runtime, bar, on_group)
    return collect(store, [i for g in groups for i in g], runtime)


def collect(store: PartialResults, ids: Sequence[str], runtime) -> dict[str, Arrays] | None:
    """After `run_groups`: on the main process of a complete run, every item's arrays; None elsewhere.

    Every process waits for the others first. A simulated share (process_index given, several
    processes) returns None: a later single-process call finds every group stored and writes."""
    runtime.wait()
    if not (runtime.is_main and runtime.launched):
        return None
    stored = store.read_all()
    missing = [i for i in ids if i not in stored]
    if missing:
        raise DataError(f"{store.folder}: no results for {len(missing)} item(s) (e.g. {missing[0]}); run again")
    return stored


def fixed_groups(ids: Iterable[str], size: int) -> list[list[str]]:
    """Consecutive groups of `size` ids: the unit of work, the same for any process count."""
    ids = list(ids)
    return [ids[i:i + size] for i in range(0, len(ids), max(1, int(size)))]
