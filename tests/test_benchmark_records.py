"""Benchmarks keep every held-out run: a record is appended (never rewritten) with its per-item table."""
import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _records(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_RESULTS", str(tmp_path / "results"))
    spec = importlib.util.spec_from_file_location("bench_records", ROOT / "benchmarks" / "records.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runs_are_appended_with_commit_date_and_items(tmp_path, monkeypatch):
    rec = _records(tmp_path, monkeypatch)
    first = rec.save_run("demo", {"auroc": 0.9}, [{"image": "a", "hit": 1}, {"image": "b", "hit": 0, "extra": [1, 2]}])
    second = rec.save_run("demo", {"auroc": 0.8}, [{"image": "a", "hit": 0}], protocol={"draws": 4})
    runs = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert [r["summary"]["auroc"] for r in runs] == [0.9, 0.8]  # the first run is still there
    assert (first["runs_before"], second["runs_before"]) == (0, 1)
    assert runs[1]["protocol"] == {"draws": 4} and len(runs[0]["commit"]) >= 7 and runs[0]["date"].startswith("20")
    tables = sorted((tmp_path / "results" / "demo").glob("items-*.csv"))
    assert len(tables) == 2 and first["items"].endswith(tables[0].name)
    with open(tables[0]) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["a", "b"] and rows[1]["extra"] == "[1, 2]" and rows[0]["extra"] == ""


def test_benchmarks_page_is_generated_from_the_records():
    """docs/benchmarks.md is what benchmarks/tables.py renders from benchmarks/results (rerun it after a run)."""
    from benchmarks import tables

    assert (tables.ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8") == tables.render()
    assert "| pointing_game | 0.9313 [0.8803, 0.9652] |" in tables.render()  # a value beside its interval


def test_defects_selection_takes_the_cheapest_candidate_near_the_best():
    from benchmarks.anomaly_defects import SELECT_TOL, pick

    cheap = [dict(top_k=1, mean=0.9985, fit_and_val_s=90.0), dict(top_k=4, mean=0.9985, fit_and_val_s=90.0)]
    costly = dict(top_k=4, mean=0.9985 + SELECT_TOL / 2, fit_and_val_s=170.0)
    poor = dict(top_k=1, mean=0.9, fit_and_val_s=60.0)
    assert pick(cheap + [costly, poor]) is cheap[0]  # within the tolerance: the cheaper; of equals the first
    clearly = dict(top_k=16, mean=0.9985 + 2 * SELECT_TOL, fit_and_val_s=170.0)
    assert pick(cheap + [clearly, poor]) is clearly  # beyond it: the better, whatever it costs
    assert pick([dict(top_k=1, mean=0.97, fit_and_val_s=90.0), dict(top_k=4, mean=0.98, fit_and_val_s=90.0)]
                )["top_k"] == 4  # one fit's top-k choices: the higher mean


def test_defects_pixel_intervals_contain_their_points():
    """The pixel AUROC / PRO points are computed on the maps their intervals resample (pooled both)."""
    import numpy as np

    from benchmarks.anomaly_defects import pixel_estimates, pooled
    from diffmine.evaluation.anomaly import pixel_auroc, pro_score

    g = np.random.default_rng(0)
    masks = np.zeros((24, 32, 32), bool)
    for i in range(12):  # half the images hold a small square defect
        y, x = g.integers(2, 24, 2)
        masks[i, y:y + 5, x:x + 5] = True
    maps = g.normal(size=masks.shape) + 1.5 * masks + g.normal(0, 0.5, (24, 1, 1))  # per-image offsets: spread
    est = pixel_estimates(maps, masks, pool=4, n=100)
    m, k = pooled(maps, 4), pooled(masks.astype(np.float32), 4) > 0
    assert est["pixel_auroc"] == pixel_auroc(m, k) and est["pro"] == pro_score(m, k)
    for name in ("pixel_auroc", "pro"):
        lo, hi = est[f"{name}_ci"]
        assert lo <= est[name] <= hi, (name, est[name], lo, hi)
    assert est["pixel_auroc"] != pixel_auroc(maps, masks)  # full-resolution maps give another number
