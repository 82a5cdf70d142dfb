"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

    write_json(path, obj)                    # strict JSON: NaN -> null, numpy scalars and paths as values
    with output_folder(out) as tmp: ...      # everything written into tmp appears in `out` at once
    with output_folder(out, owned=OUTPUTS) as tmp: ...   # only the names a run owns are replaced in `out`
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
def output_folder(final: str | Path, owned: tuple[str, ...] | None = None) -> Iterator[Path]:
    """A temporary folder that becomes `final` when the block ends without an error, and is removed
    when it raises (a kill leaves it behind: the next run's `output_folder` removes such leftovers).

    owned=None: `final` is replaced whole. owned=names: the new entries are swapped into `final`
    (`swap_in`), the owned names the run did not write are removed, anything else in `final` (a
    store, kept partial work) stays."""
    final = Path(final)
    if owned is None:
        final.parent.mkdir(parents=True, exist_ok=True)
        leftovers = final.parent.glob(f".{final.name}.tmp-*")
    else:
        finish_swap(final)  # a kill mid-swap is completed first
        final.mkdir(parents=True, exist_ok=True)
        leftovers = final.glob(f".{final.name}.tmp-*")
    for old in leftovers:
        shutil.rmtree(old, ignore_errors=True)
    tmp = temporary_name(final, inside=owned is not None)
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
