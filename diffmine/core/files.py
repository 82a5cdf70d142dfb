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


SWAP_JOURNAL = ".swap-journal.json"


def swap_in(tmp: str | Path, final: str | Path, owned: tuple[str, ...] = ()) -> None:
    """Move every entry of the finished folder `tmp` into `final`, replacing same-named entries
    and removing the `owned` names the new run did not produce (stale outputs of an older run).

    A journal makes it all-or-nothing: a kill mid-swap is completed by `finish_swap` (the next
    run calls it), so `final` always ends up holding one run's outputs, never a mix."""
    tmp, final = Path(tmp), Path(final)
    final.mkdir(parents=True, exist_ok=True)
    items = sorted(p.name for p in tmp.iterdir())
    stale = sorted(n for n in owned if n not in items and (final / n).exists())
    write_json(final / SWAP_JOURNAL, {"from": tmp.name, "items": items, "stale": stale})
    finish_swap(final)


def finish_swap(final: str | Path) -> None:
    """Complete an interrupted `swap_in` (idempotent; nothing to do without a journal)."""
    final = Path(final)
    journal = final / SWAP_JOURNAL
    if not journal.exists():
        return
    plan = json.loads(journal.read_text())
    tmp = final / plan["from"]  # the finished run's folder, inside `final` (one filesystem)
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
