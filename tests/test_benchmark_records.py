"""Benchmarks keep every held-out run: a record is appended (never rewritten) with its per-item table."""
import csv
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

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


def _repo(tmp_path, monkeypatch):
    """records.py pointed at a throw-away git repository whose benchmarks/results is the held-out record."""
    monkeypatch.delenv("DIFFMINE_ALLOW_DIRTY", raising=False)
    rec = _records(tmp_path, monkeypatch)
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "protocols").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo, check=True,
                                    capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(rec, "ROOT", repo)
    monkeypatch.setattr(rec, "HELD_OUT", repo / "benchmarks" / "results")
    monkeypatch.setattr(rec, "RESULTS", repo / "benchmarks" / "results")
    return rec, repo, git


def test_no_held_out_record_from_a_dirty_tree(tmp_path, monkeypatch):
    rec, repo, git = _repo(tmp_path, monkeypatch)
    clean = rec.save_run("demo", {"auroc": 0.9}, [])
    assert "dirty" not in clean and clean["commit"] == git("rev-parse", "--short=10", "HEAD")
    (repo / "code.py").write_text("x = 2\n")  # uncommitted code: its record names no code that exists
    with pytest.raises(SystemExit, match="commit first"):
        rec.save_run("demo", {"auroc": 0.8}, [])
    assert len(json.loads((repo / "benchmarks" / "results" / "demo.json").read_text())) == 1  # nothing appended
    assert rec.save_run("demo", {"auroc": 0.8}, [], allow_dirty=True)["dirty"] is True
    monkeypatch.setenv("DIFFMINE_ALLOW_DIRTY", "1")
    assert rec.save_run("demo", {"auroc": 0.7}, [])["dirty"] is True
    monkeypatch.delenv("DIFFMINE_ALLOW_DIRTY")
    monkeypatch.setattr(rec, "RESULTS", tmp_path / "smoke")  # a smoke run: kept, marked
    assert rec.save_run("demo", {"auroc": 0.6}, [])["dirty"] is True


def test_a_run_of_the_records_alone_is_clean(tmp_path, monkeypatch):
    """The records are appended before they are committed: a second run is not refused for the first's record."""
    rec, repo, git = _repo(tmp_path, monkeypatch)
    rec.save_run("demo", {"auroc": 0.9}, [])
    git("add", ".")
    git("commit", "-qm", "record")
    assert "dirty" not in rec.save_run("demo", {"auroc": 0.8}, [])


def test_confirmation_runs_name_their_committed_protocol(tmp_path, monkeypatch):
    rec, repo, git = _repo(tmp_path, monkeypatch)
    proto = repo / "benchmarks" / "protocols" / "demo.json"
    body = {k: "x" for k in rec.PROTOCOL_KEYS}
    proto.write_text(json.dumps(body))
    with pytest.raises(SystemExit, match="not committed"):  # written but not committed
        rec.save_run("demo", {"auroc": 0.9}, [], protocol_file=proto)
    git("add", ".")
    git("commit", "-qm", "protocol")
    first = git("log", "-1", "--format=%H")
    done = rec.save_run("demo", {"auroc": 0.9}, [], protocol_file=proto)
    assert (done["protocol_file"], done["protocol_commit"], done["confirmation"]) == (
        "benchmarks/protocols/demo.json", first, True)
    proto.write_text(json.dumps({**body, "target": "y"}))  # changed after the fact
    with pytest.raises(SystemExit, match="not committed"):
        rec.save_run("demo", {"auroc": 0.9}, [], protocol_file=proto, allow_dirty=True)
    git("checkout", "--", ".")
    with pytest.raises(SystemExit, match="no such protocol"):
        rec.save_run("demo", {"auroc": 0.9}, [], protocol_file=repo / "nothing.json")
    proto.write_text(json.dumps({"claim": "demo"}))
    git("commit", "-qam", "thin protocol")
    with pytest.raises(SystemExit, match="lacks benchmark"):
        rec.save_run("demo", {"auroc": 0.9}, [], protocol_file=proto)


def test_protocol_files_are_complete_and_name_themselves():
    from benchmarks.records import PROTOCOL_KEYS

    files = sorted((ROOT / "benchmarks" / "protocols").glob("*.json"))
    assert {f.stem for f in files} >= {"demo", "planted", "localisation", "translation", "defects", "digits", "mnist",
                                       "classify"}
    seeds = []
    for f in files:
        body = json.loads(f.read_text(encoding="utf-8"))
        assert [k for k in PROTOCOL_KEYS if k not in body] == [], f.name
        assert f"--protocol benchmarks/protocols/{f.name}" in body["command"] and (ROOT / body["script"]).is_file()
        seeds += [v for v in body["seeds"].values() if v]
    assert len(seeds) == len(set(seeds)) and min(seeds) > 1000  # fresh, one set per claim


def test_benchmarks_page_is_generated_from_the_records():
    """docs/benchmarks.md is what benchmarks/tables.py renders from benchmarks/results (rerun it after a run)."""
    from benchmarks import tables

    assert (tables.ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8") == tables.render()
    demo = tables.runs_of("demo_heldout")[-1]["summary"]  # the latest record, whichever run that is
    cell = tables._cell(demo["pointing_game"], demo["pointing_game_ci"])
    assert "[" in cell and f"| pointing_game | {cell} |" in tables.render()  # a value beside its interval


def test_readme_headline_table_is_generated_from_the_records():
    """The README's headline table is what benchmarks/tables.py renders from the records (rerun it after a run)."""
    from benchmarks import tables

    readme = (tables.ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(tables.HEAD_START) == 1 and readme == tables.readme_with_headline(readme)
    demo = tables.runs_of("demo_heldout")[-1]["summary"]
    shown = "| {:.3f} [{:.3f}, {:.3f}] |".format(demo["pointing_game"], *demo["pointing_game_ci"])
    start = readme.index(tables.HEAD_START)  # the value as the headline shows it (prose may quote it too)
    at = readme.index(shown, start)
    edited = readme[:at] + shown.replace("| 0.", "| 1.", 1) + readme[at + len(shown):]
    assert edited != readme and tables.readme_with_headline(edited) == readme  # a value typed by hand is caught


def test_headline_rules():
    from benchmarks.tables import _met

    assert [_met(0.93, [0.88, 0.96], 0.9, ">="), _met(0.93, [0.91, 0.96], 0.9, ">="), _met(0.8, [0.7, 0.85], 0.9, ">=")
            ] == ["point only", "yes", "**no**"]
    assert [_met(0.1, [0.05, 0.2], 0, "ci>0"), _met(-0.1, [-0.2, -0.05], 0, "ci>0"), _met(0.0, [-0.1, 0.1], 0, "ci>0"),
            _met(275.2, None, 600, "<"), _met(1, None, None, None)] == ["yes", "**no**", "not established", "yes", ""]


def test_a_curve_benchmark_shows_every_run_as_a_row():
    from benchmarks.tables import curve_table

    runs = [{"summary": {"step": 500, "finetune": {}, "acc": 0.25, "acc_ci": [0.2, 0.3]}},
            {"summary": {"step": 1000, "finetune": {"lr": 0.0005}, "acc": 0.5}}]
    assert curve_table(runs, ("step", "finetune", "acc")) == [
        "| step | finetune | acc |", "|---|---|---|", "| 500 | {} | 0.25 [0.2, 0.3] |",
        '| 1000 | {"lr": 0.0005} | 0.5 |']


def test_a_curve_row_shows_the_default_for_a_column_older_runs_did_not_record():
    from benchmarks.tables import curve_table

    runs = [{"summary": {"step": 500}}, {"summary": {"step": 1000, "base": "assets/tiny-broad-model"}}]
    assert curve_table(runs, ("base", "step"), {"base": "tiny"})[2:] == [
        "| tiny | 500 |", "| assets/tiny-broad-model | 1000 |"]


def test_dirty_records_are_marked_in_the_tables():
    from benchmarks import tables

    assert tables.commit_cell({"commit": "abc+dirty"}) == "`abc`" + tables.DIRTY  # older records
    assert tables.commit_cell({"commit": "abc", "dirty": True}) == "`abc`" + tables.DIRTY
    assert tables.commit_cell({"commit": "abc"}) == "`abc`"
    page = tables.render()
    assert "`d5473c27ed`" + tables.DIRTY in page and "+dirty`" not in page and tables.DIRTY_NOTE in page


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


def test_planted_elements_summary_is_the_per_label_means_with_intervals_that_hold_them():
    from benchmarks.planted_elements import summarise

    rows = [{"label": lab, "pointing": p, "pixel_auroc": a, "label_gain_pct": g, "contrast_pointing": 0.0,
             "contrast_pixel_auroc": 0.5, "map_element": g, "map_distractors": 2.5}
            for lab, p, a, g in (("a", 1.0, 0.8, 1.0), ("a", 0.0, 0.6, 2.0), ("b", 1.0, 0.9, 3.0), ("b", 1.0, 0.7, 4.0))]
    s = summarise(rows, ("a", "b"))
    assert s["element_above_distractors"] == 0.5  # the b images' maps are higher on their element
    assert (s["pointing_game"], s["pixel_auroc"], s["label_gain_pct"]) == (0.75, 0.75, 2.5)
    assert (s["a_pointing_game"], s["b_pointing_game"], s["a_pixel_auroc"], s["b_pixel_auroc"]) == (0.5, 1.0, 0.7, 0.8)
    assert (s["pointing_game_minus_contrast"], s["pixel_auroc_minus_contrast"]) == (0.75, 0.25)
    for key in ("pointing_game", "pixel_auroc", "a_pointing_game", "b_pixel_auroc", "label_gain_pct"):
        low, high = s[f"{key}_ci"]
        assert low <= s[key] <= high
    assert s["b_pointing_game_ci"] == [1.0, 1.0]  # every b image hit
    json.dumps(s)  # a record holds plain numbers


def test_adopting_a_worktrees_results_keeps_the_runs_recorded_here_meanwhile(tmp_path, monkeypatch):
    """The other checkout's file predates a run recorded here: adopt appends only its new run, renumbered."""
    rec = _records(tmp_path, monkeypatch)
    other = tmp_path / "wt" / "benchmarks" / "results"
    rec.save_run("demo", {"auroc": 0.9}, [{"image": "a"}])  # a run both checkouts hold
    other.parent.mkdir(parents=True)
    shutil.copytree(tmp_path / "results", other)
    rec.save_run("demo", {"auroc": 0.8}, [{"image": "here"}])  # recorded here after the worktree was made
    monkeypatch.setattr(rec, "RESULTS", other)
    rec.save_run("demo", {"auroc": 0.7}, [{"image": "there"}])  # recorded in the worktree
    monkeypatch.setattr(rec, "RESULTS", tmp_path / "results")
    (other / "gpu_summary.json").write_text('{"speed": 1}')  # not a file of runs: left alone
    assert rec.adopt(other) == {"demo": 1} and rec.adopt(other) == {}  # twice: nothing twice
    runs = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert [r["summary"]["auroc"] for r in runs] == [0.9, 0.8, 0.7] and runs[2]["runs_before"] == 2
    table = tmp_path.parent / runs[2]["items"]  # items paths start at the results folder's grandparent
    assert table.name.startswith("items-003-") and "there" in table.read_text()
    assert len(list((tmp_path / "results" / "demo").glob("items-*.csv"))) == 3
