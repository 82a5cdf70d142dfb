"""benchmarks/gpu_end_to_end.py on the CPU: SD v1.5's architecture at 64 px with the smallest settings.

One run with room for every phase, then one with a budget no phase can meet (the random-weight
folder, 4.3 GB, is built once and reused), then a bad flag."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_end_to_end.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
KEYS = ("phase", "status", "seconds", "budget_s", "items", "unit", "items_per_s", "peak_mem_gb", "placement_ok")
SMALL = ["--device", "cpu", "--resolution", "64", "--images", "4", "--draws", "2", "--dift-draws", "1",
         "--steps", "1", "--finetune-steps", "1", "--finetune-batch", "1", "--lora-rank", "4",
         "--compare-images", "1", "--compare-draws", "10", "--reference-draws", "4", "--no-compile"]


def _run(*argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def _phases(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_every_phase_timed_then_a_budget_no_phase_meets(tmp_path):
    from gpu_end_to_end import PHASES

    folder, out = tmp_path / "sd15", tmp_path / "run"
    res = _run(*SMALL, "--budget-s", 900, "--folder", folder, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _phases(out)
    assert [r["phase"] for r in rows] == list(PHASES)
    for r in rows:
        assert all(k in r for k in KEYS), r
        assert r["status"] == "ok", r
        assert r["placement_ok"] is True, r  # every UNet / VAE forward on the CPU in float32
        assert r["items"] >= 1 and r["items_per_s"] > 0 and r["peak_mem_gb"] is None, r
    by = {r["phase"]: r for r in rows}
    assert by["typicality"]["forwards"]["unet"] >= 1 and by["anomaly_fit_patches"]["forwards"]["vae.encoder"] >= 1
    assert by["classify"]["labels"] == 4  # every town
    cmp = by["engine_vs_reference"]
    assert set(cmp["contenders"]) == {"reference", "engine"} and cmp["compile"].startswith("skipped")
    assert all(-1 <= c["corr"] <= 1 and c["images_per_s"] > 0 for c in cmp["contenders"].values())
    table = (out / "table.md").read_text()
    assert all(f"| {p} | ok |" in table for p in PHASES)
    assert json.loads((out / "setup.json").read_text())["build"]["params_m"]["unet"] == pytest.approx(859.52)

    # a budget no phase can meet: each phase that starts stops at its first forward and says so; the
    # phases that need the finetuned model are skipped; the folder is reused, not rebuilt
    tiny = tmp_path / "tiny"
    res = _run(*SMALL, "--budget-s", 0.001, "--folder", folder, "--out", tiny)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _phases(tiny)
    assert [r["phase"] for r in rows] == list(PHASES)
    status = {r["phase"]: r["status"] for r in rows}
    assert {status[p] for p in ("finetune", "localize", "engine_vs_reference")} == {"out_of_budget"}, status
    assert {s for p, s in status.items() if p not in ("finetune", "localize", "engine_vs_reference")} == {"skipped"}
    assert all(r["items_per_s"] is None for r in rows)
    assert json.loads((tiny / "setup.json").read_text())["build"]["cached"] is True
    assert "| finetune | out_of_budget |" in (tiny / "table.md").read_text()


def test_a_bad_flag_is_one_line_naming_it(tmp_path):
    res = _run("--device", "cpu", "--resolution", "100", "--out", tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "gpu_end_to_end.py: error: --resolution: must be a multiple of 64 in 64..512 (SD v1.5's UNet, the towns "
        "renderer), got 100"]
    assert not (tmp_path / "phases.jsonl").exists()
