"""A generated dataset's folder: reused when it was made with the same parameters, never another's overwritten."""
from __future__ import annotations

import json
from pathlib import Path

DONE_FILE = "done.json"  # written last: a folder without it is an interrupted generation


def already_generated(out: Path, params: dict, what: str) -> bool:
    """True when `out` holds this generator's output for exactly `params` (reuse it as is).

    False when it is absent, or an earlier output of the same generator (regenerate it). A folder
    holding anything else is refused, so a mistyped --out never loses a user's files."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if not out.exists():
        return False
    done = out / DONE_FILE
    try:
        previous = json.loads(done.read_text()) if done.is_file() else None
    except json.JSONDecodeError:
        previous = None
    if previous == params:
        return True
    if not (isinstance(previous, dict) and previous.get("generator") == params["generator"]) and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a {what} dataset; refusing to overwrite it")
    return False
