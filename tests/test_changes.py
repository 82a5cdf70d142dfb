"""Consistent changes (`diffmine changes`): co-typicality, the command, --model tiny, processes, kill and resume."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffmine.core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TOWNS_MODEL = ROOT / "assets" / "tiny-towns-model"
FAST = dict(steps=5, inversion_steps=5, batch_size=4)  # random-weight runs: the structure, not the looks
# small runs: 6 source images in 3 groups of 2
SMALL = dict(clusters=2, draws=4, per_image=2, top=8, min_members=1, min_images=1, dift_draws=1, group=2)


def _translate(model, data, out, **kw):
    from diffmine.apps.translate.config import TranslateConfig
    from diffmine.apps.translate.run import run_translate

    cfg = TranslateConfig(model=str(model), data=str(data), out=str(out),
                          **{"to": "all", **FAST, "process_index": 0, "num_processes": 1, **kw})
    return run_translate(cfg, progress=False)


def _changes(model, tr, out, **kw):
    from diffmine.apps.changes.config import ChangesConfig
    from diffmine.apps.changes.run import run_changes

    cfg = ChangesConfig(model=str(model), translations=str(tr), out=str(out),
                        **{**SMALL, "process_index": 0, "num_processes": 1, **kw})
    return run_changes(cfg, progress=False)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "config.json"}


@pytest.fixture(scope="module")
def translations(tiny_model_dir, tmp_path_factory):
    from conftest import make_color_dataset

    root = tmp_path_factory.mktemp("changes")
    data = make_color_dataset(root / "data", n_per_label=2, labels=("red", "blue", "green"))
    return _translate(tiny_model_dir, data, root / "tr")


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, translations, tmp_path_factory):
    """The reference: one process, in this interpreter."""
    return _changes(tiny_model_dir, translations, tmp_path_factory.mktemp("ref") / "ch")


# -- co-typicality ---------------------------------------------------------------------------
def test_cotypicality_known_answer():
    from diffmine.apps.changes.cotypicality import cotypical_patches, cotypicality_scores

    # three translations of one 20 px image; each is typical in its own corner, and two of three at (8, 8)
    maps = np.zeros((3, 20, 20), np.float32)
    maps[0, 0:4, 0:4] = maps[1, 0:4, 16:20] = maps[2, 16:20, 0:4] = 5.0  # one target only: median 0
    maps[0, 8:12, 8:12] = maps[1, 8:12, 8:12] = 2.0                      # two of three: median 2
    maps[2, 8:12, 8:12] = -1.0
    each, med = cotypicality_scores(maps, 4)
    assert each.shape == (3, 17, 17) and float(med[8, 8]) == pytest.approx(2.0)
    assert float(med[0, 0]) == 0.0 and float(med.max()) == pytest.approx(2.0)
    p = cotypical_patches([maps], 4, per_image=1)
    assert p.box.tolist() == [[8, 8, 12, 12]] and p.score[0] == pytest.approx(2.0)
    # even number of targets: the mean of the middle two
    assert float(cotypicality_scores(maps[:2], 4)[1][0, 0]) == pytest.approx(2.5)  # (5 + 0) / 2


# -- the command ------------------------------------------------------------------------------
def test_changes_report_and_other_model(tiny_model_dir, translations, one_process, tmp_path):
    out = one_process
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert len(rows) == 8  # the 8 most co-typical of 6 images x 2 patches
    for r in rows:  # co-typicality is the median over targets of each translation's patch typicality
        vals = [float(r[f"typicality_{c}"]) for c in ("blue", "green", "red") if c != r["source_label"]]
        assert r[f"typicality_{r['source_label']}"] == "" and len(vals) == 2
        assert float(r["cotypicality"]) == pytest.approx(np.median(vals), abs=1e-6)
    ranks = [float(r["median_cotypicality"]) for r in rows]
    assert ranks == sorted(ranks, reverse=True)
    html = (out / "report.html").read_text()
    assert "<th>blue</th><th>green</th><th>red</th>" in html and html.count("class='src'") == len(rows)
    assert all((out / f).is_file() for f in __import__("re").findall(r"src='(patches/[^']+)'", html))
    assert not (out / ".partial").exists()  # the partial results go once the outputs are written
    with pytest.raises(DataError, match="made with another model") as e:
        _changes(TOWNS_MODEL, translations, tmp_path / "x")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such folder"):
        _changes(tmp_path / "no-model", translations, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_changes_model_tiny(tmp_path):
    """`--model tiny` (the shipped towns model) through translate and changes."""
    from PIL import Image

    from diffmine.datasets.towns import render_facade

    rng = np.random.default_rng(0)
    for town in ("ashford", "brill"):
        (tmp_path / "data" / town).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.asarray(render_facade(rng, town)[0])).save(tmp_path / "data" / town / f"{i}.png")
    tr = _translate("tiny", tmp_path / "data", tmp_path / "tr", batch_size=8)
    out = _changes("tiny", tr, tmp_path / "ch", per_image=1, top=4)
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert len(rows) == 4 and {r["source_label"] for r in rows} == {"ashford", "brill"}
    assert json.loads((out / "config.json").read_text())["model"] == "tiny"


def test_changes_accelerate_launch_two_processes(tiny_model_dir, translations, one_process, tmp_path):
    out = tmp_path / "launched"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "changes", "--model", str(tiny_model_dir), "--translations", str(translations), "--out", str(out)]
    for name, value in SMALL.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1  # the main process writes, the other returns
    got, want = _files(out), _files(one_process)
    assert got.keys() == want.keys() and "clusters.csv" in got
    assert [k for k in want if got[k] != want[k]] == []  # byte for byte
    assert not (out / ".partial").exists()


def test_changes_killed_then_resumed(tiny_model_dir, translations, one_process, tmp_path):
    from diffmine.core import partial

    out = tmp_path / "ch"
    kw = {**SMALL, "model": str(tiny_model_dir), "translations": str(translations), "out": str(out),
          "process_index": 0, "num_processes": 1}
    script = ("import os, signal, json\nfrom diffmine.core import partial\n"
              "from diffmine.apps.changes.config import ChangesConfig\nfrom diffmine.apps.changes.run import run_changes\n"
              "add = partial.PartialResults.add\n"
              "def dying(self, results):\n    add(self, results)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              "partial.PartialResults.add = dying\n"  # killed once the first group is stored
              f"run_changes(ChangesConfig(**json.loads({json.dumps(json.dumps(kw))})), progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.glob(".partial/*/part-*.safetensors"))) == 1 and not (out / "clusters.csv").exists()
    stored = []
    real_add = partial.PartialResults.add

    def counting_add(self, results):
        stored.append(sorted(results))
        real_add(self, results)

    partial.PartialResults.add = counting_add
    try:
        _changes(tiny_model_dir, translations, out)
    finally:
        partial.PartialResults.add = real_add
    assert len(stored) == 2 and "blue/img_000" not in sum(stored, [])  # only the two missing groups redone
    got, want = _files(out), _files(one_process)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []
    assert not (out / ".partial").exists()
