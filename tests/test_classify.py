"""`diffmine classify` on the runtime: --model tiny, split over `accelerate launch` processes, resume after a kill.

Each compares the files of a run with those of one uninterrupted single-process run, byte for byte."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmine.apps.classify.config import ClassifyConfig
from diffmine.apps.classify.run import run_classify

ROOT = Path(__file__).resolve().parents[1]
# the shipped towns model (4 labels): 2 draws x 5 prompts = 10 rows an image, 2 images a group
FAST = dict(model="tiny", prune="off", draws=2, batch_size=20)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _data(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / f"img_{i}.png")
    return root


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(data: Path, out: Path, **kw):
    return run_classify(ClassifyConfig(data=str(data), out=str(out), **{**FAST, **kw}), progress=False)


def test_tiny_model_and_simulated_split(tmp_path):
    data = _data(tmp_path / "d")
    one = _run(data, tmp_path / "one", process_index=0, num_processes=1)
    assert one["images"] == 6 and one["labels"] and one["unet_rows_per_image"] == 2 * (1 + len(one["labels"]))
    assert not (tmp_path / "one" / ".partial").exists()
    out = tmp_path / "split"
    for rank in (0, 1):  # simulated processes: no barrier, so neither writes the files
        assert _run(data, out, process_index=rank, num_processes=2) is None
    assert not (out / "predictions.csv").exists() and len(list((out / ".partial").rglob("part-*"))) == 3
    calls = []
    run_classify(ClassifyConfig(data=str(data), out=str(out), process_index=0, num_processes=1, **FAST),
                 progress=False, on_group=calls.append)
    assert calls == []  # every group was stored: nothing recomputed
    a, b = _files(tmp_path / "one"), _files(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "config.json")


def test_killed_run_resumes_with_only_missing_groups(tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "out"
    _run(data, out, process_index=0, num_processes=1)
    reference = _files(out)
    shutil.rmtree(out)
    cfg = ClassifyConfig(data=str(data), out=str(out), process_index=0, num_processes=1, **FAST)
    script = ("import os, signal, json\nfrom diffmine.core import partial\n"
              "from diffmine.apps.classify.config import ClassifyConfig\nfrom diffmine.apps.classify.run import run_classify\n"
              "add = partial.PartialResults.add\nn = [0]\n"
              "def dying(self, results):\n    n[0] += 1\n    if n[0] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return add(self, results)\n"
              "partial.PartialResults.add = dying\n"
              f"cfg = ClassifyConfig(**json.loads({json.dumps(json.dumps(asdict(cfg)))}))\n"
              "run_classify(cfg, progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((out / ".partial").rglob("part-*"))) == 1 and not (out / "predictions.csv").exists()
    calls = []
    run_classify(cfg, progress=False, on_group=calls.append)
    assert len(calls) == 2  # 3 groups, 1 kept from the killed run
    assert _files(out) == reference and not (out / ".partial").exists()


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "classify", "--model", "tiny", "--data", str(data), "--out", str(out), "--prune", "off",
           "--draws", "2", "--batch-size", "20"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("written to") == 1  # the main process wrote and said so
    launched = tmp_path / "launched"
    out.rename(launched)
    _run(data, out, process_index=0, num_processes=1)
    a, b = _files(launched), _files(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "config.json")
    ca, cb = (json.loads(x["config.json"]) for x in (a, b))
    assert {k: v for k, v in ca.items() if k not in ("process_index", "num_processes")} == \
        {k: v for k, v in cb.items() if k not in ("process_index", "num_processes")}
