"""One writer per output folder: a lock file beside it names its owner (pid, host, start time).

    with writer_lock(out, runtime):   # every command that writes a folder (or a file: anomaly score's CSV)
        ...

A second writer is refused in one line naming the owner; a lock left by a process that is gone
(a dead pid on this host: a kill, a crash) is taken over with a one-line note. The processes of one
`accelerate launch` are one writer: the main process takes the lock and tells the others whether
it got it (`Runtime.broadcast`), so they stop with it instead of writing into a folder another run
owns. The lock sits beside the folder (`<parent>/.<name>.lock`), not inside it: it exists before the
folder does and outlives a folder that is replaced whole (`files.output_folder`). Within one process
the lock is re-entrant (a command that runs another into a folder of its own)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from diffmine.core.errors import DataError
from diffmine.core.files import finish_swap


def lock_path(folder: str | Path) -> Path:
    """The lock of the folder itself, however it is named (a symlink, `..`): two names, one writer."""
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: an owner we cannot name (the lock is written whole, so not a writer mid-write)


class FolderLock:
    """The lock of `folder`, taken by `acquire` and given back by `release` (only by its owner)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self.owned = False

    def _me(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()), "folder": str(self.folder)}

    def _create(self, me: dict) -> bool:
        """Create the lock holding `me`, atomically and whole (a hard link fails if the lock exists)."""
        tmp = self.path.with_name(f"{self.path.name}.{me['host']}-{me['pid']}.tmp")
        tmp.write_text(json.dumps(me), encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = self._me()
        for _ in range(5):
            if self._create(me):
                self.owned = True
                return self
            owner = _read(self.path)
            if owner is None:  # given back in between: try again
                continue
            pid, host = owner.get("pid"), owner.get("host")
            if host == me["host"] and pid == me["pid"]:
                return self  # this process holds it already (re-entrant): the outer holder gives it back
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                if _read(self.path) == owner:  # still the dead owner's lock, not a new one
                    self.path.unlink(missing_ok=True)
                    print(f"note: {self.folder}: taking over the lock of pid {pid}, which is gone "
                          f"(it started writing {owner.get('since', '?')})", file=sys.stderr)
                continue
            raise DataError(f"{self.folder} is being written by pid {pid if pid is not None else '?'} on host "
                            f"{host or '?'} since {owner.get('since', '?')}; wait or remove {self.path} if that "
                            "process is gone")
        raise DataError(f"{self.folder}: could not take the lock {self.path} (other writers keep taking it)")

    def release(self) -> None:
        if self.owned:
            owner = _read(self.path)
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.owned = False


@contextlib.contextmanager
def writer_lock(folder: str | Path, runtime=None) -> Iterator[None]:
    """Hold the lock of `folder` for the block. With a runtime, only its main process takes it; the
    other processes of the launch learn whether it did and fail with the same line if not."""
    main = runtime is None or runtime.is_main
    lock, refused = FolderLock(folder), None
    if main:
        try:
            lock.acquire()
        except DataError as exc:
            refused = str(exc)
    if runtime is not None:
        refused = runtime.broadcast(refused)
    if refused:
        raise DataError(refused)
    try:
        if main:  # a killed run's output-folder swap is completed before this run writes anything
            finish_swap(Path(folder).resolve())
        if runtime is not None:
            runtime.wait()  # the other processes write nothing into the folder before it is whole again
        yield
    finally:
        lock.release()
