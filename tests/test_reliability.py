"""Faults a new user meets (bad input, kills, mistyped paths), each reproduced on a real tiny model and real files.

Each test failed before its fix (silent wrong answer, lost
work, a traceback, or a silently replaced parameter)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmine.cli import main
from diffmine.core.errors import DataError
from mining.config import MineConfig
from mining.mine import run_mining
from typicality.engine import run_typicality
from typicality.store import TypicalityStore

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(draws=2, batch_size=16)


def _typ(model, data, out, **kw):
    return run_typicality(model=str(model), data=str(data), out=str(out), progress=False, process_index=0,
                          num_processes=1, **{**FAST, **kw})


def _mine_cfg(model, data, typ, out, **kw) -> MineConfig:
    return MineConfig(model=str(model), data=str(data), typicality=str(typ), out=str(out), per_image=1, clusters=2,
                      min_members=1, min_images=1, dift_draws=1, kmeans_iter=3, **kw)


def _metadata_dataset(root: Path, labels: list[str], size: int = 32) -> Path:
    root.mkdir(parents=True)
    rows = ["file_name,label"]
    for k, lab in enumerate(labels):
        img = np.random.default_rng(k).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"{k}.png")
        rows.append(f"{k}.png,{lab}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_multi_label_images_are_mined_under_each_label(tiny_model_dir, tmp_path):
    data = _metadata_dataset(tmp_path / "d", ["zero", "seven", "zero|seven", "zero", "seven"])
    typ = _typ(tiny_model_dir, data, tmp_path / "typ")
    assert ("2", "zero") in TypicalityStore.open(typ).pairs() and ("2", "seven") in TypicalityStore.open(typ).pairs()
    out = run_mining(_mine_cfg(tiny_model_dir, data, typ, tmp_path / "mine"), progress=False)
    rows = (out / "clusters.csv").read_text().splitlines()[1:]
    # every top patch is a member (clusters of one allowed): image 2 appears under both of its labels
    assert {(r.split(",")[0], r.split(",")[7]) for r in rows} >= {("zero", "2"), ("seven", "2")}


def test_maps_of_another_model_or_other_pixels_are_refused(tiny_model_dir, tiny_bundle, color_dataset, tmp_path):
    import copy

    typ = _typ(tiny_model_dir, color_dataset, tmp_path / "typ")
    other = copy.deepcopy(tiny_bundle)
    with __import__("torch").no_grad():
        for param in other.unet.parameters():
            param.add_(1.0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(DataError, match="computed with another model.*--force"):
        run_mining(_mine_cfg(tmp_path / "other", color_dataset, typ, tmp_path / "m1"), progress=False)
    # same ids, other pixels: one image replaced by another picture
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(color_dataset / "red" / "img_000.png")
    with pytest.raises(DataError, match="images differ"):
        run_mining(_mine_cfg(tiny_model_dir, color_dataset, typ, tmp_path / "m2"), progress=False)
    with pytest.warns(UserWarning, match="images differ"):
        run_mining(_mine_cfg(tiny_model_dir, color_dataset, typ, tmp_path / "m3", force=True), progress=False)
    with pytest.raises(DataError, match="other settings.*data_fingerprint"):  # resuming into it: refused too
        _typ(tiny_model_dir, color_dataset, typ)


@pytest.mark.parametrize("argv, message", [
    (["typicality", "--draws", "0"], "--draws must be >= 1, got 0"),
    (["typicality", "--draws", "-3"], "--draws must be >= 1, got -3"),
    (["typicality", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["typicality", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    (["typicality", "--t-range", "0", "1.5"], "--t-range must be two fractions 0 <= LOW < HIGH <= 1, got 0.0 1.5"),
    (["finetune", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["finetune", "--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
])
def test_out_of_range_parameters_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    io = {"typicality": ["--model", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
          "finetune": ["--base", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o")]}[argv[0]]
    assert main(argv[:1] + io + argv[1:]) == 2
    assert capsys.readouterr().err.strip() == f"diffmine {argv[0]}: error: {message}"
    assert not (tmp_path / "o").exists()


def test_resume_with_other_settings_and_overwriting_a_model_are_refused(tiny_model_dir, color_dataset, tmp_path):
    from diffmine.core.settings import ConfigError
    from finetune.train import train
    from finetune.config import TrainConfig

    cfg = TrainConfig(data=str(color_dataset), out=str(tmp_path / "m"), base=str(tiny_model_dir), batch_size=4,
                      max_steps=2, samples_per_label=0, checkpoint_every=1, log_every=1, adapt_vae="never")
    train(cfg, progress=False)
    with pytest.raises(DataError, match="already holds a model.*--resume"):
        train(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"^lr differs from the run being resumed .*lr: 0.0001 there, 0.001 now"):
        train(replace(cfg, resume=True, max_steps=3, lr=1e-3), progress=False)
    train(replace(cfg, resume=True, max_steps=3), progress=False)  # same settings, longer: continues
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[2]["elapsed_s"] >= log[1]["elapsed_s"] > 0  # elapsed time goes on across the resume


def test_one_image_per_label_says_so_instead_of_mining_nothing_silently(tiny_model_dir, tmp_path, capsys):
    data = _metadata_dataset(tmp_path / "d", ["a", "b", "c"])
    typ = _typ(tiny_model_dir, data, tmp_path / "typ")
    run_mining(replace(_mine_cfg(tiny_model_dir, data, typ, tmp_path / "m"), min_images=2), progress=False)
    out = capsys.readouterr().out
    assert "no cluster passed the filters for a, b, c (--min-members 1, --min-images 2)" in out


def test_labels_the_model_never_saw(tiny_model_dir, color_dataset, tmp_path):
    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_model_dir, model)
    (model / "diffmine_train.json").write_text(json.dumps({"labels": ["red", "green"]}))
    with pytest.raises(DataError, match=r"label\(s\) blue were not among the labels .* \(red, green\); pass --force"):
        _typ(model, color_dataset, tmp_path / "t1")
    assert not (tmp_path / "t1").exists()
    with pytest.warns(UserWarning, match="scoring them anyway"):
        _typ(model, color_dataset, tmp_path / "t2", force=True)


def test_killed_mine_leaves_the_old_run_complete(tiny_model_dir, color_dataset, tmp_path):
    typ = _typ(tiny_model_dir, color_dataset, tmp_path / "typ")
    out = tmp_path / "mine"
    cfg = _mine_cfg(tiny_model_dir, color_dataset, typ, out)
    run_mining(cfg, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # rerun with other settings, SIGKILLed while it writes its heatmap pictures
    script = ("import os, signal, json\nfrom mining import mine\nfrom mining.config import MineConfig\n"
              "n = [0]\nsave = mine.save_heatmap_pair\n"
              "def dying(*a, **k):\n    n[0] += 1\n    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return save(*a, **k)\n"
              "mine.save_heatmap_pair = dying\n"
              f"cfg = MineConfig(**json.loads({json.dumps(json.dumps({**cfg.__dict__, 'seed': 5}))}))\n"
              "mine.run_mining(cfg, progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
             and not any(part.startswith((".mine.tmp-", ".partial")) for part in p.relative_to(out).parts)}
    assert after == before  # the old run, whole: not one file of the killed run among the outputs
    assert list(out.glob(".partial/features-*/part-*"))  # the killed run's features are kept for its rerun
    run_mining(replace(cfg, seed=5), progress=False)  # the next run completes and cleans up
    assert not list(out.glob(".*.tmp-*")) and json.loads((out / "config.json").read_text())["seed"] == 5
    html = (out / "report.html").read_text()
    refs = __import__("re").findall(r"src=[\"']([^\"']+)[\"']", html)
    assert refs and all((out / ref).is_file() for ref in refs)


def test_a_kill_loses_at_most_a_shard_and_the_store_stays_compact(tiny_model_dir, color_dataset, tmp_path):
    ref = TypicalityStore.open(_typ(tiny_model_dir, color_dataset, tmp_path / "ref", group=1))
    # a shard after every image (groups of one, as a slow run's time-based flush would), then compaction
    out = _typ(tiny_model_dir, color_dataset, tmp_path / "small", shard_size=5, shard_seconds=1e-9, group=1)
    store = TypicalityStore.open(out)
    assert len(list(out.glob("shard-*.safetensors"))) == 3  # 12 images in shards of <= 5: 5 + 5 + 2
    assert store.pairs() == ref.pairs()
    for i, lab in ref.pairs():
        np.testing.assert_array_equal(store.latent_map(i, lab), ref.latent_map(i, lab))


def test_vae_training_resumes_from_its_checkpoint(monkeypatch, tmp_path):
    import torch

    from finetune import vae_train
    from diffmine.core.tiny import build_tiny_bundle

    monkeypatch.setattr(vae_train, "CHECKPOINT_EVERY", 2)
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    whole = build_tiny_bundle(resolution=16, seed=0).vae
    vae_train.train_vae(whole, images, steps=5, batch_size=2, progress=False)
    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def dying_clip(*a, **k):  # the 4th step dies: steps 1-3 done, the checkpoint holds step 2
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_clip(*a, **k)

    killed = build_tiny_bundle(resolution=16, seed=0).vae
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", dying_clip)
    with pytest.raises(KeyboardInterrupt):
        vae_train.train_vae(killed, images, steps=5, batch_size=2, progress=False, checkpoint=tmp_path / "vae.pt")
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    resumed = build_tiny_bundle(resolution=16, seed=0).vae
    vae_train.train_vae(resumed, images, steps=5, batch_size=2, progress=False, checkpoint=tmp_path / "vae.pt")
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_failed_commands_leave_no_output_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for cmd in (["finetune", "--base", "tiny"], ["typicality", "--model", "tiny"]):
        assert main(cmd + ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
        assert not (tmp_path / "o").exists()


def test_mistyped_paths_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}  # even online: nothing is sent to the hub
    for name in ("runs/nosuch", "tinyy"):
        proc = subprocess.run([sys.executable, "-m", "diffmine", "typicality", "--model", name, "--data", ".",
                               "--out", "o"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"diffmine typicality: error: model {name}: no such folder, and not a hub id (owner/name) or a small "
            "base (tiny, tiny-broad, tiny-scratch)"]


def test_mine_skip_bad_is_passed_on(tiny_model_dir, color_dataset, tmp_path):
    typ = _typ(tiny_model_dir, color_dataset, tmp_path / "typ")
    (color_dataset / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        run_mining(_mine_cfg(tiny_model_dir, color_dataset, typ, tmp_path / "m1"), progress=False)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        out = run_mining(_mine_cfg(tiny_model_dir, color_dataset, typ, tmp_path / "m2", skip_bad=True),
                         progress=False)
    assert (out / "report.html").is_file()
