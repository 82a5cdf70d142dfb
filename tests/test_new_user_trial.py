"""A new user's trial of every command: the three bad cases and the minor ones, each tried as the user did.

Bad: `classify` and `changes` deleted a user's own file in --out; a kill between the two renames of
the output-folder swap left every rerun in a traceback; `changes` read translations with a loader of
its own, so a truncated translation PNG gave a traceback with or without --skip-bad. Each test here
failed before its fix."""
from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_color_dataset
from diffmine.core.errors import DataError

# small `changes` runs (as tests/test_changes.py): 3 labels x 2 images, random-weight model
TRANSLATE = dict(to="all", steps=5, inversion_steps=5, batch_size=4, process_index=0, num_processes=1)
CHANGES = dict(clusters=2, draws=4, per_image=2, top=8, min_members=1, min_images=1, dift_draws=1, group=2,
               process_index=0, num_processes=1)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMINE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def translations(tiny_model_dir, tmp_path_factory):
    from diffmine.apps.translate.config import TranslateConfig
    from diffmine.apps.translate.run import run_translate

    root = tmp_path_factory.mktemp("trial")
    data = make_color_dataset(root / "data", n_per_label=2, labels=("red", "blue", "green"))
    return Path(run_translate(TranslateConfig(model=str(tiny_model_dir), data=str(data), out=str(root / "tr"),
                                              **TRANSLATE), progress=False))


def _changes(model, tr, out, **kw):
    from diffmine.apps.changes.config import ChangesConfig
    from diffmine.apps.changes.run import run_changes

    return run_changes(ChangesConfig(model=str(model), translations=str(tr), out=str(out), **{**CHANGES, **kw}),
                       progress=False)


# -- bad 1: a user's own file in --out is never deleted without --force ---------------------------------
def test_classify_keeps_a_users_own_file_in_out(tmp_path):
    from diffmine.apps.classify.config import ClassifyConfig
    from diffmine.apps.classify.run import run_classify

    data = tmp_path / "d"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    cfg = ClassifyConfig(data=str(data), out=str(out), model="tiny", prune="off", draws=1, batch_size=20,
                         process_index=0, num_processes=1)
    run_classify(cfg, progress=False)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "predictions.csv").is_file()
    run_classify(cfg, progress=False)  # a rerun replaces its own outputs, and still keeps the user's
    assert (out / "notes.txt").read_text() == "my notes" and not (out / ".partial").exists()


def test_changes_keeps_a_users_own_file_in_out(tiny_model_dir, translations, tmp_path):
    out = tmp_path / "ch"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    _changes(tiny_model_dir, translations, out)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "report.html").is_file()
    assert not (out / ".partial").exists()  # the run's own partial work goes once the outputs are written


def test_every_output_folder_call_says_what_the_run_owns():
    """`owned` has no default: a new command cannot replace a user's --out whole by forgetting it."""
    import inspect

    from diffmine.core.files import output_folder

    assert inspect.signature(output_folder.__wrapped__).parameters["owned"].default is inspect.Parameter.empty


# -- bad 2: a kill at any point of the output-folder swap ---------------------------------------------
OWNED = ("report.html", "clusters.csv", "patches")
# the steps of a swap with two entries to keep: os.replace calls in order, then the clean-up
KILL_POINTS = ["journal", "keep .partial", "keep notes.txt", "old out aside", "new out in", "old out removed",
               "journal removed"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_point_of_the_swap_is_completed_by_the_next_run(tmp_path, monkeypatch, point):
    from diffmine.core import files
    from diffmine.core.lock import writer_lock

    out = tmp_path / "mine"

    def run(version, before=None):
        with writer_lock(out):
            if before:
                before()
            with files.output_folder(out, owned=OWNED) as tmp:
                (tmp / "report.html").write_text(f"report {version}")
                (tmp / "clusters.csv").write_text(f"clusters {version}")
                (tmp / "patches").mkdir()
                (tmp / "patches" / "p.png").write_text(f"patch {version}")

    def seen():
        return [(out / n).read_text() if (out / n).exists() else None
                for n in ("report.html", "clusters.csv", "patches/p.png")]

    run(1)
    (out / ".partial").mkdir()
    (out / ".partial" / "kept").write_text("kept work")
    (out / "notes.txt").write_text("not the run's")
    real_replace, real_rmtree, real_unlink, calls = os.replace, shutil.rmtree, Path.unlink, [0]
    at = KILL_POINTS.index(point) + 1

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    def rmtree(path, *a, **kw):
        if point == "old out removed" and Path(path).name.endswith(".old-swap"):
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **kw)

    def unlink(self, *a, **kw):
        if point == "journal removed" and self.name.endswith(".swap.json"):
            raise KeyboardInterrupt
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        run(2)
    monkeypatch.undo()
    monkeypatch.setenv("DIFFMINE_CACHE", str(tmp_path / "cache"))
    # what a reader sees now: one whole run (between the two renames, for an instant, no folder)
    assert seen() in (["report 1", "clusters 1", "patch 1"], ["report 2", "clusters 2", "patch 2"],
                      [None, None, None]), point

    # the next run first makes partial work of its own inside `out` (as mine and localize do)
    def partial_work():
        (out / ".partial" / "next").mkdir(parents=True, exist_ok=True)

    run(3, partial_work)
    assert seen() == ["report 3", "clusters 3", "patch 3"], point
    assert (out / ".partial" / "kept").read_text() == "kept work" and (out / ".partial" / "next").is_dir()
    assert (out / "notes.txt").read_text() == "not the run's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")) == [], point


# -- bad 3: translations are read by the one reader, honouring --skip-bad --------------------------------
def test_changes_names_a_truncated_translation_or_skips_it(tiny_model_dir, translations, tmp_path):
    import csv

    tr = tmp_path / "tr"
    shutil.copytree(translations, tr)
    with open(tr / "translations.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bad = tr / rows[0]["file"]
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])  # a copy cut short
    with pytest.raises(DataError, match=rf"{bad.name}: not a readable image") as err:
        _changes(tiny_model_dir, tr, tmp_path / "ch")
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning, match=rf"skipped 1 bad image\(s\): .*{bad.name}"):
        out = _changes(tiny_model_dir, tr, tmp_path / "ch2", skip_bad=True)
    with open(Path(out) / "clusters.csv", newline="", encoding="utf-8") as f:
        assert rows[0]["image_id"] not in {r["image_id"] for r in csv.DictReader(f)}  # its image is left out


# -- the minor ones ------------------------------------------------------------------------------------
def test_the_writer_lock_is_one_for_every_name_of_a_folder(tmp_path):
    """Two runs writing one folder through a symlink were both let in: the lock was keyed on the name."""
    from diffmine.core.lock import FolderLock, lock_path

    real, link = tmp_path / "out", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "since": "earlier"}  # another live process
    lock_path(real).write_text(json.dumps(owner), encoding="utf-8")
    with pytest.raises(DataError, match=rf"link is being written by pid {os.getppid()} "):
        FolderLock(link).acquire()
    assert lock_path(link) == lock_path(real)


def test_a_folder_of_images_without_label_folders_says_what_it_found(tiny_model_dir, tmp_path):
    from diffmine.apps.translate.config import TranslateConfig
    from diffmine.apps.translate.run import run_translate
    from diffmine.core.dataset import LabeledImages
    from typicality.engine import run_typicality

    root = tmp_path / "flat"
    root.mkdir()
    for i in range(10):
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(root / f"{i}.png")
    expected = (r"flat: 10 image file\(s\) but no label folders; expected a folder per label \(flat/<label>/\*.png\) "
                r"or metadata.csv with a 'label' column")
    with pytest.raises(DataError, match=expected):
        LabeledImages(root)
    with pytest.raises(DataError, match=expected):
        run_typicality(model=str(tiny_model_dir), data=str(root), out=str(tmp_path / "t"), progress=False,
                       process_index=0, num_processes=1, draws=2)
    with pytest.raises(DataError, match=expected):
        run_translate(TranslateConfig(model=str(tiny_model_dir), data=str(root), out=str(tmp_path / "tr"),
                                      **TRANSLATE), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found$"):  # nothing there: nothing more to say
        LabeledImages(tmp_path / "empty")


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path, capsys):
    from diffmine.cli import main

    data = make_color_dataset(tmp_path / "d", n_per_label=1)
    argv = ["typicality", "--model", "tiny", "--data", str(data), "--out", str(tmp_path / "t")]
    for value, problem in (('"many"', "must be int, got 'many'"), ("0", "must be >= 1, got 0")):
        config = tmp_path / "settings.json"
        config.write_text(f'{{"draws": {value}}}')
        assert main(argv + ["--config", str(config)]) == 2
        assert capsys.readouterr().err.strip() == f"diffmine typicality: error: {config}: draws {problem}"
    assert main(argv + ["--config", str(config), "--draws", "0"]) == 2  # given as a flag: named as the flag
    assert capsys.readouterr().err.strip() == "diffmine typicality: error: --draws must be >= 1, got 0"


def test_bf16_on_a_cpu_says_it_is_slow():
    from diffmine.core.runtime import Runtime

    with pytest.warns(UserWarning, match=r"--dtype bf16 on the CPU .* slower than fp32"):
        Runtime.start(device="cpu", dtype="bf16", process_index=0, num_processes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Runtime.start(device="cpu", dtype="auto", process_index=0, num_processes=1)


def test_assets_says_it_resumes_and_how_to_continue(tmp_path, monkeypatch, capsys):
    """`diffmine assets` resumed its VAE but said "from scratch", and told the user to pass a --resume it lacks."""
    from diffmine.apps.demo.run import AssetsConfig, build_assets
    from finetune import vae_train

    def stopped(vae, images, steps, checkpoint=None, **kw):  # the time limit, as it comes mid-VAE
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        Path(checkpoint).write_bytes(b"state")
        raise vae_train.VAEStopped(1, steps)

    monkeypatch.setattr(vae_train, "train_vae", stopped)
    cfg = AssetsConfig(out=str(tmp_path / "assets"), work=str(tmp_path / "work"), minutes=1)
    for attempt in (1, 2):
        assert build_assets(cfg, towns={"n_train": 4, "n_test": 1}, vae_steps=2, max_steps=2, batch_size=8) is None
        out = capsys.readouterr().out
        assert "--resume" not in out and "in VAE training at step 1 of 2; run the same command again" in out
        assert ("training the small VAE from scratch" in out) == (attempt == 1), out
        assert ("resuming the small VAE's training from" in out) == (attempt == 2), out
