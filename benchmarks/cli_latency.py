"""How fast the command line answers when it has nothing heavy to do: --help, a subcommand's --help,
and an argument error (each a fresh `python -m diffmine` process, so imports count).

    python -m benchmarks.cli_latency [--runs 15]

Each run is appended to benchmarks/results/cli_latency.json through benchmarks.records (commit, date,
python, runs), its per-run seconds of each case in the run's items table, with the median and a 95 %
bootstrap interval of the median (scipy.stats.bootstrap). Last stdout line:
{"help_s": ..., "help_s_ci": [lo, hi], "typicality_help_s": ..., ..., "runs": n}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name -> (arguments, expected exit status)
    "help_s": (["--help"], 0),
    "typicality_help_s": (["typicality", "--help"], 0),
    "argument_error_s": (["typicality", "--draws", "x"], 2),
}


def one_run(args: list[str], status: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffmine", *args], cwd=ROOT, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != status:
        raise SystemExit(f"diffmine {' '.join(args)}: exit {proc.returncode}, expected {status}: "
                         f"{proc.stderr.decode()[-500:]}")
    return seconds


def median_ci(values: list[float]) -> list[float]:
    res = bootstrap((np.asarray(values),), np.median, confidence_level=0.95, n_resamples=2000,
                    method="percentile", random_state=0)
    return [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    one_run(*CASES["help_s"])  # warm the file cache: every case then starts alike
    per_run = {name: [] for name in CASES}
    for _ in range(a.runs):  # cases interleaved, so a busy moment of the machine spreads over all of them
        for name, (args, status) in CASES.items():
            per_run[name].append(round(one_run(args, status), 4))
    summary = {}
    for name, values in per_run.items():
        summary[name] = round(float(np.median(values)), 4)
        summary[f"{name}_ci"] = median_ci(values)
    summary["runs"] = a.runs
    from benchmarks.records import save_run

    items = [{"run": i, "case": name, "seconds": values[i]} for name, values in per_run.items()
             for i in range(len(values))]
    save_run("cli_latency", summary, items, protocol={"runs": a.runs, "python": sys.version.split()[0]})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
