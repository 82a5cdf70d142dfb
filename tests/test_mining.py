"""The mining stage end to end on real small data: real images, a real tiny UNet, a real store.

The known-answer tests write typicality maps whose answer is known (high exactly on each
label's characteristic element) into a real TypicalityStore, then run the real mining stage.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError
from diffmine.core.settings import ConfigError
from diffmine.evaluation.groundtruth import record_elements
from mining.config import MineConfig
from mining.mine import run_mining
from mining.patches import boxes_overlap

RES = 32
COLORS = {"red": ((220, 30, 30), "red_square"), "blue": ((30, 30, 220), "blue_square")}


def make_gt_dataset(root: Path, n_per_label: int = 6, seed: int = 0) -> Path:
    """48x32 images (centre-cropped to 32x32): a label-coloured square (characteristic) and a white
    bar (shared) on noise, with an `elements` column."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for lab, (col, kind) in COLORS.items():
        for i in range(n_per_label):
            img = rng.integers(90, 160, (32, 48, 3), dtype=np.uint8)
            x, y = int(rng.integers(8, 30)), int(rng.integers(0, 16))
            img[y:y + 10, x:x + 10] = col
            img[26:30, 8:40] = (250, 250, 250)
            name = f"{lab}_{i}.png"
            Image.fromarray(img).save(root / name)
            rows.append({"file_name": name, "label": lab, "elements": [
                {"kind": kind, "box": [x, y, x + 10, y + 10], "label": lab},
                {"kind": "bar", "box": [8, 26, 40, 30], "label": None}]})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def oracle_maps(dataset: LabeledImages, shared: float = 0.2, seed: int = 0) -> dict:
    """Typicality 1 on the label's characteristic elements, `shared` on shared ones, ~0 elsewhere."""
    rng = np.random.default_rng(seed)
    maps = {}
    for r in dataset:
        el = record_elements(r, RES, dataset.root)
        for lab in r.labels:
            m = rng.normal(0, 0.01, (RES, RES)).astype(np.float32)
            m[el.union(el.characteristic(lab))] += 1.0
            m[el.union(el.shared())] += shared
            maps[(r.image_id, lab)] = m
    return maps


def write_store(path: Path, maps: dict) -> Path:
    """A real TypicalityStore holding `maps` (stored at full resolution: upsampling is the identity)."""
    from typicality.store import ImageResult, ShardWriter, merge_manifests

    labels = sorted({lab for _, lab in maps})
    meta = {"resolution": RES, "latent_size": [RES, RES], "labels_mode": "own"}
    w = ShardWriter(path, meta, labels)
    by_image: dict[str, list[str]] = {}
    for i, lab in maps:
        by_image.setdefault(i, []).append(lab)
    for i, labs in sorted(by_image.items()):
        diff = np.stack([maps[(i, lab)] for lab in labs])
        w.add(ImageResult(i, labs, diff, np.zeros((RES, RES), np.float32), np.zeros_like(diff)))
    w.close()
    merge_manifests(path)
    return path


def mine(model, data, store, out, cfg: MineConfig, **kw) -> Path:
    """run_mining on folders, as the CLI calls it."""
    cfg = replace(cfg, model=str(model), data=str(data), typicality=str(store), out=str(out), **kw)
    return run_mining(cfg, progress=False)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _check_references(out: Path, rows: list[dict]):
    html = (out / "report.html").read_text(encoding="utf-8")
    refs = {r for r in re.findall(r'(?:src|href)=["\']([^"\']+)["\']', html) if not r.startswith("#")}  # files
    assert refs, "the report shows no pictures"
    for ref in refs:
        assert not ref.startswith(("/", "http")) and (out / ref).is_file(), ref
    for row in rows:
        assert (out / row["patch_file"]).is_file()
        if row["heatmap_file"]:
            assert (out / row["heatmap_file"]).is_file()
    doc = json.loads((out / "clusters.json").read_text())
    assert any(lab["grid"] for lab in doc["labels"].values())
    for lab in doc["labels"].values():
        assert lab["grid"] is None or (out / lab["grid"]).is_file()  # None: no cluster kept for the label
        for cl in lab["clusters"]:
            for m in cl["members"]:
                assert (out / m["patch_file"]).is_file()
        for patches in lab["baselines"].values():
            assert patches and all((out / p["patch_file"]).is_file() and (out / p["heatmap_file"]).is_file()
                                   for p in patches)


@pytest.fixture(scope="module")
def gt_data(tmp_path_factory):
    return make_gt_dataset(tmp_path_factory.mktemp("gt") / "data")


@pytest.fixture(scope="module")
def gt_store(tmp_path_factory, gt_data):
    return write_store(tmp_path_factory.mktemp("gt") / "typ", oracle_maps(LabeledImages(gt_data)))


@pytest.fixture(scope="module")
def mined(tmp_path_factory, tiny_model_dir, gt_data, gt_store):
    out = tmp_path_factory.mktemp("mine") / "out"
    cfg = MineConfig(per_image=1, clusters=3, min_members=2, min_images=2, kmeans_iter=10)
    return mine(tiny_model_dir, gt_data, gt_store, out, cfg)


def test_known_answer_metrics(mined):
    m = json.loads((mined / "metrics.json").read_text())
    assert m["pointing_game"] == 1.0 and m["pointing_game_pairs"] == 12
    assert m["pixel_auroc"] == 1.0
    # one top patch per image, always inside the square: every cluster is pure, both kinds recovered
    assert m["elements_recovered"] == 1.0
    assert m["per_label"]["red"]["recovered_kinds"] == ["red_square"]
    assert m["shared_over_characteristic"] == pytest.approx(0.2, abs=0.02)
    rates = m["characteristic_hit_rate"]
    assert rates["top"] == 1.0 and rates["least_typical"] == 0.0 and 0.0 <= rates["random"] < 1.0
    for lab, clusters in m["clusters"].items():
        assert clusters and all(c["purity"] == 1.0 and c["majority_kind"] == COLORS[lab][1] for c in clusters)


def test_table_report_and_files(mined, gt_data):
    rows = _read_csv(mined / "clusters.csv")
    assert rows and {"label", "cluster_rank", "median_typicality", "image_id", "x0", "y0", "x1", "y1",
                     "typicality", "distance"} <= set(rows[0])
    doc = json.loads((mined / "clusters.json").read_text())
    kept = [c for lab in doc["labels"].values() for c in lab["clusters"]]
    assert len(rows) == sum(c["n_members"] for c in kept) and 4 <= len(rows) <= 12
    assert all(c["n_members"] >= 2 and c["n_images"] >= 2 for c in kept)  # min_members, min_images
    _check_references(mined, rows)
    ds = LabeledImages(gt_data)
    for row in rows:  # the top patch of each image lies inside its planted square
        el = record_elements(ds[ds.index(row["image_id"])], RES, gt_data)
        x0, y0, x1, y1 = (int(row[c]) for c in ("x0", "y0", "x1", "y1"))
        assert x1 - x0 == 6 and el.masks[0][y0:y1, x0:x1].all()
        assert row["element_kind"] == COLORS[row["label"]][1]
    # ranked by median typicality; members nearest the centroid first
    for lab in COLORS:
        lr = [r for r in rows if r["label"] == lab]
        med = [float(r["median_typicality"]) for r in lr if r["member_rank"] == "0"]
        assert med == sorted(med, reverse=True)
        for rank in {r["cluster_rank"] for r in lr}:
            d = [float(r["distance"]) for r in lr if r["cluster_rank"] == rank]
            assert d == sorted(d)
    assert (mined / "grids").is_dir() and len(list((mined / "grids").glob("*.png"))) == 2
    assert not (mined / ".cache").exists()


def test_non_overlap_and_determinism(tiny_model_dir, gt_data, gt_store, tmp_path):
    cfg = MineConfig(per_image=4, per_label=30, clusters=4, min_members=1, min_images=1, seed=3)
    a = mine(tiny_model_dir, gt_data, gt_store, tmp_path / "a", cfg)
    b = mine(tiny_model_dir, gt_data, gt_store, tmp_path / "b", cfg)
    ra, rb = _read_csv(a / "clusters.csv"), _read_csv(b / "clusters.csv")
    assert ra == rb  # same seed: same features, same clusters, same table
    assert (a / "clusters.json").read_text() == (b / "clusters.json").read_text()
    for lab in COLORS:
        assert len([r for r in ra if r["label"] == lab]) <= 30
    by_image: dict[tuple, list] = {}
    for r in ra:
        by_image.setdefault((r["label"], r["image_id"]), []).append([int(r[c]) for c in ("x0", "y0", "x1", "y1")])
    assert max(len(v) for v in by_image.values()) > 1
    for boxes in by_image.values():
        assert len(boxes) <= 4 and boxes_overlap(np.array(boxes), np.array(boxes)).sum() == len(boxes)


def test_towns_ground_truth_from_mask_files(tiny_model_dir, tmp_path):
    """The embedded towns data (mask files, several kinds per label) with oracle maps."""
    from diffmine.datasets.towns import generate_towns

    data = generate_towns(tmp_path / "towns", n_train=3, n_test=1, size=RES, seed=1) / "train"
    ds = LabeledImages(data)
    store = write_store(tmp_path / "typ", oracle_maps(ds, shared=0.3))
    out = mine(tiny_model_dir, data, store, tmp_path / "out", MineConfig(per_image=1, clusters=2, min_members=1, min_images=1, kmeans_iter=5))
    m = json.loads((out / "metrics.json").read_text())
    assert m["pointing_game"] == 1.0 and m["pixel_auroc"] == 1.0
    assert m["shared_over_characteristic"] == pytest.approx(0.3, abs=0.03)
    assert set(m["per_label"]) == {"ashford", "brill", "corran", "dunmore"}
    assert all(len(v["characteristic_kinds"]) == 2 for v in m["per_label"].values())
    rows = _read_csv(out / "clusters.csv")
    assert len(rows) == 12
    _check_references(out, rows)


def test_bad_inputs(tiny_model_dir, gt_data, gt_store, tmp_path, color_dataset):
    with pytest.raises(DataError, match="no typicality map"):
        mine(tiny_model_dir, color_dataset, gt_store, tmp_path / "o1", MineConfig())
    with pytest.raises(DataError, match="larger than"):
        mine(tiny_model_dir, gt_data, gt_store, tmp_path / "o2", MineConfig(patch=40))
    with pytest.raises(DataError, match="per_image must be >= 1"):
        mine(tiny_model_dir, gt_data, gt_store, tmp_path / "o3", MineConfig(per_image=0))
    with pytest.raises(DataError, match="not a typicality store"):
        mine(tiny_model_dir, gt_data, tmp_path, tmp_path / "o4", MineConfig())


def test_cli_clip_without_weights_is_one_clear_line(gt_data, gt_store, tmp_path, capsys):
    from diffmine.cli import main

    rc = main(["mine", "--model", "unused", "--data", str(gt_data), "--typicality", str(gt_store),
               "--out", str(tmp_path / "o"), "--feature", "clip"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "clip" in err.lower() and len(err.splitlines()) == 1


def test_no_ground_truth_no_metrics(tiny_model_dir, color_dataset, tmp_path):
    ds = LabeledImages(color_dataset)
    rng = np.random.default_rng(0)
    store = write_store(tmp_path / "typ", {(r.image_id, r.labels[0]): rng.normal(size=(RES, RES)).astype(np.float32)
                                           for r in ds})
    out = mine(tiny_model_dir, color_dataset, store, tmp_path / "out", MineConfig(per_image=2, clusters=2))
    assert (out / "report.html").is_file() and not (out / "metrics.json").exists()
    _check_references(out, _read_csv(out / "clusters.csv"))


def test_cli_mine_after_real_typicality(tiny_model_dir, tmp_path):
    """The README flow: diffmine typicality, then diffmine mine, on the towns data with the tiny model."""
    from diffmine.datasets.towns import generate_towns
    from diffmine.cli import main

    data = generate_towns(tmp_path / "towns", n_train=3, n_test=1, size=RES, seed=2) / "train"
    typ = tmp_path / "typ"
    assert main(["typicality", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(typ),
                 "--draws", "4"]) == 0
    out = tmp_path / "mine"
    assert main(["mine", "--model", str(tiny_model_dir), "--data", str(data), "--typicality", str(typ),
                 "--out", str(out), "--per-image", "2", "--clusters", "3", "--min-images", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # the command is a thin roof: its metrics are those of the same settings through the Python API
    api = mine(tiny_model_dir, data, typ, tmp_path / "api", MineConfig(per_image=2, clusters=3, min_images=1))
    assert m == json.loads((api / "metrics.json").read_text())
    assert m["pointing_game_pairs"] == 12 and m["pixel_auroc_pairs"] == 12  # 4 towns x 3 images, all scored
    _check_references(out, _read_csv(out / "clusters.csv"))


def test_eval_sigma_blurs_the_maps_before_the_map_metrics(tiny_model_dir, gt_data, gt_store, tmp_path, mined):
    """The oracle maps are exactly the squares (AUROC 1.0); blurred, they bleed over the edges, so
    AUROC drops below 1 while the peak stays inside (pointing 1.0); the clusters do not change."""
    cfg = MineConfig(per_image=1, clusters=3, min_members=2, min_images=2, kmeans_iter=10, eval_sigma=40)
    out = mine(tiny_model_dir, gt_data, gt_store, tmp_path / "out", cfg)
    blurred, raw = (json.loads((d / "metrics.json").read_text()) for d in (out, mined))
    assert blurred["pointing_game"] == 1.0 and 0.9 < blurred["pixel_auroc"] < 1.0
    assert blurred["clusters"] == raw["clusters"] and blurred["elements_recovered"] == raw["elements_recovered"]
    with pytest.raises(ConfigError, match="eval_sigma"):
        MineConfig(data="d", typicality="t", out="o", model="m", eval_sigma=-1).validate()


def _output_files(out: Path) -> dict:
    """Every output file's bytes, config.json without the fields that name the run itself."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and not p.relative_to(out).parts[0].startswith(".")}
    cfg = json.loads(files.pop("config.json"))
    return files, {k: v for k, v in cfg.items() if k not in ("out", "process_index", "num_processes")}


MINE_FLAGS = ["--per-image", "1", "--clusters", "3", "--min-members", "2", "--min-images", "2", "--kmeans-iter", "10",
              "--batch-size", "2", "--dift-draws", "2"]


@pytest.mark.slow
def test_accelerate_launch_two_processes_mine_the_same_files(tiny_model_dir, gt_data, gt_store, tmp_path):
    """Each process computes the DIFT features of its share of the image groups; the main process clusters
    and writes: every file is the one a single process writes, byte for byte."""
    import os
    import subprocess
    import sys

    from diffmine.cli import main

    root = Path(__file__).resolve().parents[1]
    common = ["--model", str(tiny_model_dir), "--data", str(gt_data), "--typicality", str(gt_store), *MINE_FLAGS]
    assert main(["mine", *common, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "mine", *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _output_files(tmp_path / "two") == _output_files(tmp_path / "one")
    assert not (tmp_path / "two" / ".partial").exists()  # the kept features go once the outputs are written


def test_mine_killed_during_features_resumes_to_the_same_files(tiny_model_dir, gt_data, gt_store, tmp_path):
    """A run SIGKILLed after its first feature group keeps that group; the rerun computes only the others
    and writes the files of an uninterrupted run. Two simulated processes share the groups the same way."""
    import signal
    import subprocess
    import sys

    cfg = MineConfig(per_image=1, clusters=3, min_members=2, min_images=2, kmeans_iter=10, batch_size=2,
                     dift_draws=2)
    whole = mine(tiny_model_dir, gt_data, gt_store, tmp_path / "whole", cfg)
    out = tmp_path / "killed"
    settings = {**replace(cfg, model=str(tiny_model_dir), data=str(gt_data), typicality=str(gt_store),
                          out=str(out)).__dict__}
    script = ("import os, signal, json\nfrom mining import features\nfrom mining.mine import run_mining\n"
              "from mining.config import MineConfig\n"
              "n = [0]\ncall = features.DiftExtractor.__call__\n"
              "def dying(self, *a, **k):\n    n[0] += 1\n    if n[0] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return call(self, *a, **k)\n"
              "features.DiftExtractor.__call__ = dying\n"
              f"run_mining(MineConfig(**json.loads({json.dumps(json.dumps(settings))})), progress=False)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    kept = list(out.glob(".partial/features-*/part-r0-*.safetensors"))
    assert len(kept) == 1 and not (out / "report.html").exists()  # one finished group, no outputs yet

    from mining import features
    calls = []
    real = features.DiftExtractor.__call__
    features.DiftExtractor.__call__ = lambda self, images, prompts: calls.append(len(images)) or real(self, images, prompts)
    try:
        run_mining(replace(cfg, model=str(tiny_model_dir), data=str(gt_data), typicality=str(gt_store), out=str(out)),
                   progress=False)
    finally:
        features.DiftExtractor.__call__ = real
    assert sum(calls) == 12 - 2  # 12 images with a kept patch, groups of 2: the kept group is not redone
    assert _output_files(out) == _output_files(whole)

    # two simulated processes: each computes its groups; a last single-process call only writes
    split = tmp_path / "split"
    for rank in (0, 1):
        assert mine(tiny_model_dir, gt_data, gt_store, split, cfg, process_index=rank, num_processes=2) == split
        assert not (split / "report.html").exists()
    shards = [p.name.split("-")[1] for p in split.glob(".partial/features-*/part-*.safetensors")]
    assert sorted(shards) == ["r0"] * 3 + ["r1"] * 3  # six groups of two images, dealt out 0, 1, 0, 1, ...
    mine(tiny_model_dir, gt_data, gt_store, split, cfg)
    assert _output_files(split) == _output_files(whole)
