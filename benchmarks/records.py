"""How a benchmark keeps its results: every held-out run appended, its per-item table beside it.

    from benchmarks.records import save_run
    save_run("localize_synthetic", summary, items, protocol={...})

writes `benchmarks/results/<name>/items-<run>-<date>-<commit>.csv` (one row per item: image, box,
translation, digit) and appends `{"commit", "date", "command", "protocol", "summary", "items"}`
to `benchmarks/results/<name>.json`, a list that is never rewritten, only extended. `runs_before`
says how many held-out runs of this benchmark preceded this one (the README quotes it).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

# smoke runs (tests, trying a change) point BENCHMARK_RESULTS elsewhere so the record stays held-out runs only
RESULTS = Path(os.environ.get("BENCHMARK_RESULTS", Path(__file__).resolve().parent / "results"))


def commit() -> str:
    """The checked-out commit, with '+dirty' when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def previous_runs(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _csv(items: list[dict]) -> str:
    cols: list[str] = []
    for row in items:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for row in items:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in row.items()})
    return buf.getvalue()


def save_run(name: str, summary: dict, items: list[dict], protocol: dict | None = None) -> dict:
    """Append this run to RESULTS/<name>.json and write its items; returns the record."""
    when = dt.datetime.now(dt.timezone.utc)
    rev = commit()
    folder = RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    runs = previous_runs(name)
    # the run's number leads the name: two runs within a second never share a table
    items_file = folder / f"items-{len(runs) + 1:03d}-{when:%Y%m%d-%H%M%S}-{rev.replace('+', '-')}.csv"
    items_file.write_text(_csv(items), encoding="utf-8")
    record = {"commit": rev, "date": when.isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "runs_before": len(runs),
              "protocol": protocol or {}, "summary": summary,
              "items": os.path.relpath(items_file, RESULTS.parent.parent)}
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(runs + [record], indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(RESULTS / f"{name}.json")
    return record
