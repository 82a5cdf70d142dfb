"""How a benchmark keeps its results: every held-out run appended, its per-item table beside it.

    from benchmarks.records import save_run
    save_run("localize_synthetic", summary, items, protocol={...}, protocol_file=args.protocol)

writes `benchmarks/results/<name>/items-<run>-<date>-<commit>.csv` (one row per item: image, box,
translation, digit) and appends `{"commit", "date", "command", "protocol", "summary", "items"}`
to `benchmarks/results/<name>.json`, a list that is never rewritten, only extended. `runs_before`
says how many held-out runs of this benchmark preceded this one (the README quotes it).

A record names the code that made it, so a tree whose tracked files differ from HEAD (the records
themselves aside) gives none: commit first. Smoke runs (BENCHMARK_RESULTS elsewhere) and runs with
`allow_dirty=True` or DIFFMINE_ALLOW_DIRTY=1 are kept, marked `"dirty": true` (the tables show a dagger).

A confirmation run names its protocol, `benchmarks/protocols/<claim>.json`, committed before the run
(data seeds never used before, settings, metric, target, baselines, the command; see
benchmarks/protocols/README.md): the record keeps the file's path and the commit that last touched it
(`"confirmation": true`), and a protocol file that is not committed as it stands is refused.

A run made in another checkout (a clean worktree of the commit it measures) comes home with
`python benchmarks/records.py adopt ../wt/benchmarks/results`: its new runs are appended here.
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

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ROOT / "benchmarks" / "results"
# smoke runs (tests, trying a change) point BENCHMARK_RESULTS elsewhere so the record stays held-out runs only
RESULTS = Path(os.environ.get("BENCHMARK_RESULTS", HELD_OUT))
ALLOW_DIRTY = "DIFFMINE_ALLOW_DIRTY"
PROTOCOL_KEYS = ("claim", "benchmark", "generator", "seeds", "settings", "metric", "target", "baselines", "command")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def changed_files() -> list[str]:
    """Tracked files that differ from HEAD, the records aside (a run appends to them before they are committed)."""
    return _git("diff", "--name-only", "HEAD", "--", ".", f":(exclude){HELD_OUT.relative_to(ROOT)}").splitlines()


def protocol_commit(path: str | Path) -> tuple[str, str]:
    """(path from the repository root, the commit that last touched it); SystemExit unless committed as it stands."""
    path = Path(path).resolve()
    rel = os.path.relpath(path, ROOT)
    if not path.is_file():
        raise SystemExit(f"{rel}: no such protocol file")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", rel], cwd=ROOT, capture_output=True).returncode == 0
    if not tracked or _git("status", "--porcelain", "--", rel):
        raise SystemExit(f"{rel}: the protocol file is not committed as it stands; commit it before its run")
    missing = [k for k in PROTOCOL_KEYS if k not in json.loads(path.read_text(encoding="utf-8"))]
    if missing:
        raise SystemExit(f"{rel}: the protocol lacks {', '.join(missing)}")
    return rel, _git("log", "-1", "--format=%H", "--", rel)


def _smoke() -> bool:
    return RESULTS.resolve() != HELD_OUT.resolve()


def _confirmable(path: str) -> str:
    """--protocol's check at start: a confirmation run refused at its end would waste the run."""
    if not _smoke():
        protocol_commit(path)
        if changed_files() and os.environ.get(ALLOW_DIRTY) != "1":
            raise SystemExit("benchmarks/records: tracked files differ from HEAD: commit first, then run again")
    return path


def protocol_argument(parser) -> None:
    """--protocol FILE: the committed protocol this run confirms; pass args.protocol to save_run(protocol_file=)."""
    parser.add_argument("--protocol", type=_confirmable, default=None,
                        help="benchmarks/protocols/<claim>.json this run confirms (committed before the run; its "
                             "command sets the data seed; the record names the file and its commit)")


def mean_interval(values, digits: int, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of `values` (2000 resamples), rounded to `digits`."""
    import numpy as np
    from scipy.stats import bootstrap

    ci = bootstrap((np.asarray(values, np.float64),), np.mean, confidence_level=0.95, n_resamples=2000,
                   method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return [round(float(ci.low), digits), round(float(ci.high), digits)]


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


def save_run(name: str, summary: dict, items: list[dict], protocol: dict | None = None,
             protocol_file: str | Path | None = None, allow_dirty: bool = False) -> dict:
    """Append this run to RESULTS/<name>.json and write its items; returns the record.

    SystemExit (one line) for a held-out record from a dirty tree (unless allowed) or from a protocol file
    that is not committed as it stands."""
    when = dt.datetime.now(dt.timezone.utc)
    smoke = _smoke()
    try:
        head, changed = _git("rev-parse", "--short=10", "HEAD"), changed_files()
    except (OSError, subprocess.CalledProcessError):
        head, changed = "unknown", []
    allowed = smoke or allow_dirty or os.environ.get(ALLOW_DIRTY) == "1"
    if changed and not allowed:
        raise SystemExit(f"benchmarks/records: {len(changed)} tracked file(s) differ from {head} ({changed[0]}, ...): "
                         f"commit first, then run again (or {ALLOW_DIRTY}=1 for a record marked dirty)")
    claimed = {}
    if protocol_file is not None:
        try:
            rel, by = protocol_commit(protocol_file)
            claimed = {"protocol_file": rel, "protocol_commit": by, "confirmation": not changed}
        except SystemExit:
            if not smoke:  # a confirmation claim is never relaxed outside smoke runs
                raise
            claimed = {"protocol_file": str(protocol_file), "protocol_commit": None, "confirmation": False}
    folder = RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    runs = previous_runs(name)
    # the run's number leads the name: two runs within a second never share a table
    items_file = folder / f"items-{len(runs) + 1:03d}-{when:%Y%m%d-%H%M%S}-{head}.csv"
    items_file.write_text(_csv(items), encoding="utf-8")
    record = {"commit": head, "date": when.isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "runs_before": len(runs),
              "protocol": protocol or {}, **claimed, **({"dirty": True} if changed else {}), "summary": summary,
              "items": os.path.relpath(items_file, RESULTS.parent.parent)}
    _write(name, runs + [record])
    return record


def _write(name: str, runs: list[dict]) -> None:
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(runs, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(RESULTS / f"{name}.json")


def _identity(record: dict) -> str:
    """A run as it was measured: all but where it stands in a file (`runs_before`, the items table's name)."""
    return json.dumps({k: v for k, v in record.items() if k not in ("runs_before", "items")}, sort_keys=True)


def adopt(source: str | Path) -> dict[str, int]:
    """Append to RESULTS the runs recorded in another results folder (a worktree's benchmarks/results) that
    RESULTS lacks, in their order: `runs_before` counted anew and each items table copied under its new run
    number. Copying that folder's files over these instead would drop the runs recorded here meanwhile.
    Returns {benchmark: runs appended}."""
    source = Path(source)
    added = {}
    for path in sorted(source.glob("*.json")):
        theirs = json.loads(path.read_text())
        if not (isinstance(theirs, list) and all(isinstance(r, dict) and "items" in r for r in theirs)):
            continue  # not a file of appended runs (a GPU summary, say): nothing to merge
        name, runs = path.stem, previous_runs(path.stem)
        known = {_identity(r) for r in runs}
        new = [r for r in theirs if _identity(r) not in known]
        for record in new:
            table = source.parent.parent / record["items"]
            target = RESULTS / name / f"items-{len(runs) + 1:03d}-{table.name.split('-', 2)[2]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(table.read_bytes())
            runs.append({**record, "runs_before": len(runs), "items": os.path.relpath(target, RESULTS.parent.parent)})
        if new:
            _write(name, runs)
            added[name] = len(new)
    return added


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="python benchmarks/records.py adopt FOLDER: append the runs "
                                     "another checkout's benchmarks/results holds and this one lacks")
    parser.add_argument("action", choices=["adopt"])
    parser.add_argument("folder", help="another checkout's benchmarks/results")
    args = parser.parse_args()
    if not Path(args.folder).is_dir():
        raise SystemExit(f"{args.folder}: no such results folder")
    added = adopt(args.folder)
    for bench, n in added.items():
        print(f"{bench}: {n} run(s) appended")
    if not added:
        print(f"{args.folder}: no run that this checkout lacks")
