"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

    write_json(path, obj)                    # strict JSON: NaN -> null, numpy scalars and paths as values
    with output_folder(out, owned=OUTPUTS) as tmp: ...   # what is written into tmp appears in `out` at once
    with output_folder(cache, owned=None) as tmp: ...    # a folder only diffmine writes: replaced whole

The output-folder policy of every command: a run replaces the entries of `out` it owns (its
outputs, its own partial work) and keeps every other one: a user's own file in `out` is never
deleted (a command's --force may refuse less, never delete more). The swap recovers from a kill at
any point: the next run (`finish_swap`, called by `writer_lock` as soon as it holds the folder)
completes it before it writes anything.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible
    os.replace(tmp, path)


def safetensors_bytes(arrays: dict, metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on the arrays and metadata: its JSON header is
    rewritten with sorted keys (safetensors orders the metadata by a hash map's whim, which differs
    between processes), so a recomputed shard is the same file, checksum included."""
    from safetensors.numpy import save

    data = save(arrays, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_ready(obj):
    """`obj` as strict JSON values: NaN and infinities -> None, numpy scalars and arrays -> Python, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays
        return json_ready(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(json_ready(obj), indent=indent, allow_nan=False))


def temporary_name(final: str | Path, inside: bool = False) -> Path:
    """A work folder for `final` that no other run uses: this process and host in its name."""
    final = Path(final)
    name = f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    return final / name if inside else final.with_name(name)


@contextlib.contextmanager
def output_folder(final: str | Path, owned: tuple[str, ...] | None) -> Iterator[Path]:
    """A temporary folder beside `final` that becomes `final` when the block ends without an error,
    and is removed when it raises (a kill leaves it behind: the next run's `output_folder` removes
    such leftovers).

    owned=names (every command's --out): the entries of `final` that the run does not own (a user's
    files, a store, kept partial work, checkpoints) move into the new folder, which then replaces
    `final` in one rename (`swap_in`); owned names the run did not write go with the old folder.
    owned=None: `final` is replaced whole; only for folders that diffmine alone writes into (a model
    copy, a cache, a generated dataset). No default: each caller says which it is."""
    final = Path(final).resolve()  # --out given as a symlink: the folder it names is swapped, the link stays
    final.parent.mkdir(parents=True, exist_ok=True)
    finish_swap(final)  # a kill mid-swap is completed first
    _restore_replaced(final)
    leftovers = [*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old*"),
                 *final.parent.glob(f".{final.name}.swap.json.tmp-*")]  # a journal killed mid-write
    if final.is_dir():  # an earlier diffmine kept its work folders inside `final`
        leftovers += final.glob(f".{final.name}.tmp-*")
    for old in leftovers:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if owned is None:
        replace_dir(tmp, final)
    else:
        swap_in(tmp, final, owned)


def _restore_replaced(final: Path) -> None:
    """A kill inside `replace_dir` between its two renames left `final` missing and the old folder
    aside: the old one comes back (the new one may be half written), so nothing is lost."""
    if final.exists():
        return
    aside = sorted(final.parent.glob(f".{final.name}.old[0-9]*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], final)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move a fully written folder into place, removing what was there."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


SWAP_JOURNAL = ".swap-journal.json"  # inside `final`: the journal of an earlier diffmine's entry-by-entry swap


def swap_journal(final: str | Path) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.swap.json")


def swap_in(tmp: str | Path, final: str | Path, owned: tuple[str, ...] = ()) -> None:
    """Make the finished folder `tmp` (beside `final`) the new `final`: the entries of `final` that
    `tmp` does not replace and the run does not own are moved into `tmp` first, then one rename
    swaps the folders. A reader sees the old run or the new one, never a mix (for an instant, no
    folder). A journal beside `final` lets `finish_swap` (the next run calls it) complete a kill."""
    tmp, final = Path(tmp), Path(final)
    write_json(swap_journal(final), {"from": tmp.name, "owned": sorted(owned)})
    finish_swap(final)


def finish_swap(final: str | Path) -> None:
    """Complete an interrupted `swap_in` (idempotent; nothing to do without a journal), whatever
    step the kill came at. `writer_lock` calls it before a run writes anything into `final`; if
    something made `final` again after a kill between the two renames, its entries that the swap
    neither owns nor replaces move into the new folder like any kept entry."""
    final = Path(final)
    journal = swap_journal(final)
    if not journal.exists():
        _finish_inner_swap(final)
        return
    plan = json.loads(journal.read_text())
    tmp, old = final.with_name(plan["from"]), final.with_name(f".{final.name}.old-swap")
    if tmp.is_dir():
        if final.is_dir():
            made = {p.name for p in tmp.iterdir()}
            for p in sorted(final.iterdir()):
                if p.name not in made and p.name not in plan["owned"]:
                    os.replace(p, tmp / p.name)  # kept work goes with the new run (a rename: same filesystem)
            # killed after `final` went aside once already: that old folder holds only owned outputs
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    journal.unlink()


def _finish_inner_swap(final: Path) -> None:
    """An earlier diffmine's swap, killed midway (journal and work folder inside `final`): completed."""
    journal = final / SWAP_JOURNAL
    if not journal.exists():
        return
    plan = json.loads(journal.read_text())
    tmp = final / plan["from"]
    for name in plan["stale"]:
        target = final / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for name in plan["items"]:
        src = tmp / name
        if not src.exists():  # moved before the interruption
            continue
        if src.is_dir():
            replace_dir(src, final / name)
        else:
            os.replace(src, final / name)
    shutil.rmtree(tmp, ignore_errors=True)
    journal.unlink()
