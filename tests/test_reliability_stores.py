"""Stores that never go silently stale or broken, tried as a new user would: a mistyped model name,
changed pixels of the same file size, the damaged-shard advice followed to the letter, two writers
into one folder, a truncated manifest, a kill mid-swap, and a command line that answers at once.

Each test failed before its fix (a hub retry loop and a traceback, stale maps used silently, advice
that did not work, a corrupted store, a mixed output folder, torch imported to print --help)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_color_dataset
from diffmine.core.errors import DataError
from typicality.engine import run_typicality
from typicality.store import TypicalityStore, verify_shards

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(draws=2, batch_size=16)


def _typ(model, data, out, **kw):
    return run_typicality(model=str(model), data=str(data), out=str(out), progress=False, process_index=0,
                          num_processes=1, **{**FAST, **kw})


def _maps(out) -> dict:
    store = TypicalityStore.open(out)
    return {pair: store.latent_map(*pair) for pair in store.pairs()}


def _assert_same_maps(out, reference) -> None:
    """The store holds exactly the reference's (image, label) maps, bit for bit."""
    got = _maps(out)
    assert sorted(got) == sorted(reference)
    for pair, expected in reference.items():
        np.testing.assert_array_equal(got[pair], expected)


def _cli(args, cwd, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "diffmine", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMINE_CACHE", str(tmp_path / "cache"))  # the content-hash cache of this test only


# -- the command line -------------------------------------------------------------------------------
def test_help_argument_and_config_errors_do_not_import_torch(tmp_path):
    script = ("import sys\nfrom diffmine.cli import main\n"
              "for argv in (['--help'], ['typicality', '--help'], ['typicality', '--draws', 'x'],\n"
              "             ['typicality', '--model', 'tiny', '--data', '.', '--out', 'o', '--draws', '0']):\n"
              "    try:\n        code = main(argv)\n    except SystemExit as exc:\n        code = exc.code\n"
              "    heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
              "    print('RESULT', argv[-1], code, heavy)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    lines = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines == ["--help 0 []", "--help 0 []", "x 2 []", "0 2 []"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--draws must be >= 1, got 0" in proc.stderr
    assert not (tmp_path / "o").exists()


# -- 1. a mistyped model name ---------------------------------------------------------------------
def test_a_mistyped_model_is_asked_of_the_hub_once_and_fails_in_one_line(color_dataset, tmp_path):
    # online, but nobody answers (a closed port): the hub library alone would retry for ~25 s, then a traceback
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    for args, what in ((["typicality", "--model"], "model"), (["finetune", "--base"], "base")):
        start = time.monotonic()
        proc = _cli([*args, "runs/nosuch", "--data", color_dataset, "--out", "o"], tmp_path, env)  # no runs/ here
        assert time.monotonic() - start < 20
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"diffmine {args[0]}: error: {what} runs/nosuch: not a local folder; the hub answered ")
    for name in ("runs/a/b", "./nosuch", "../nosuch", "~/nosuch", "owner/name/"):  # paths, never hub ids
        proc = _cli(["typicality", "--model", name, "--data", color_dataset, "--out", "o"], tmp_path, env)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"diffmine typicality: error: model {name}: no such folder, and not a hub id (owner/name) or a small "
            "base (tiny, tiny-broad, tiny-scratch)"]
    assert not (tmp_path / "o").exists()


def test_mine_with_a_missing_model_says_so(tiny_model_dir, color_dataset, tmp_path, monkeypatch):
    from mining.config import MineConfig
    from mining.mine import run_mining

    typ = _typ(tiny_model_dir, color_dataset, tmp_path / "typ")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: the name is tried on the hub, which has no such model
    cfg = MineConfig(model="runs/nosuch", data=str(color_dataset), typicality=str(typ), out=str(tmp_path / "m"))
    with pytest.raises(DataError, match=r"^model runs/nosuch: not a local folder; the hub answered") as err:
        run_mining(cfg, progress=False)
    assert "another model" not in str(err.value)


def test_each_small_base_name_means_its_folder_and_a_missing_one_names_its_recipe(tmp_path, monkeypatch):
    from diffmine.core import models

    assert models.resolve_model("tiny") == str(models.SMALL_BASE_DIR)
    monkeypatch.setitem(models.SMALL_BASES, "tiny-broad", (tmp_path / "tiny-broad-model", "broad"))
    with pytest.raises(DataError) as err:
        models.resolve_model("tiny-broad", "base")
    assert str(err.value) == (f"base tiny-broad: the shipped small model {tmp_path / 'tiny-broad-model'} is missing "
                              "(rebuild it with `make assets RECIPE=broad`)")
    (tmp_path / "tiny-broad-model").mkdir()
    (tmp_path / "tiny-broad-model" / "model_index.json").write_text("{}")
    assert models.resolve_model("tiny-broad") == str(tmp_path / "tiny-broad-model")


# -- 2. changed pixels, same file size ------------------------------------------------------------
def _uncompressed_dataset(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for label in ("red", "blue"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / label / f"{i}.png", compress_level=0)  # size fixed by the pixel count
    return root


def test_changed_pixels_of_the_same_size_are_caught(tiny_model_dir, tmp_path):
    from mining.config import MineConfig
    from mining.mine import run_mining
    data = _uncompressed_dataset(tmp_path / "d")
    typ = _typ(tiny_model_dir, data, tmp_path / "typ")
    target = data / "red" / "0.png"
    size = target.stat().st_size
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(target, compress_level=0)
    assert target.stat().st_size == size  # same size, other pixels
    cfg = MineConfig(model=str(tiny_model_dir), data=str(data), typicality=str(typ), out=str(tmp_path / "m"),
                     per_image=1, clusters=2, min_members=1, min_images=1, dift_draws=1, kmeans_iter=3)
    with pytest.raises(DataError, match="images differ from those in .*file content changed.*--force"):
        run_mining(cfg, progress=False)
    with pytest.raises(DataError, match="other settings.*data_fingerprint"):  # resuming into it: refused too
        _typ(tiny_model_dir, data, typ)
    cache = list((tmp_path / "cache" / "content-hashes").glob("*.json"))
    assert len(cache) == 1 and len(json.loads(cache[0].read_text())) == 8  # every file hashed, remembered

    # a store of the previous version (its fingerprint: ids, labels, sizes): a clear line, not a crash
    from diffmine.core.dataset import LabeledImages
    from typicality.fingerprints import data_fingerprint, legacy_data_fingerprint

    ds = LabeledImages(data)
    manifest = json.loads((typ / "manifest.json").read_text())
    manifest["meta"]["data_fingerprint"] = legacy_data_fingerprint(ds.records)
    (typ / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="written by an earlier diffmine whose data fingerprint covers file sizes"):
        _typ(tiny_model_dir, data, typ)
    with pytest.warns(UserWarning, match="earlier diffmine that fingerprinted file sizes, not content"):
        run_mining(cfg, progress=False)
    assert data_fingerprint(ds.records, data).startswith("b2:")


# -- 3. the damaged-shard advice ------------------------------------------------------------------
def test_the_damaged_shard_advice_works_and_shards_are_the_same_bytes_in_any_process(tiny_model_dir, tmp_path):
    data = make_color_dataset(tmp_path / "d")  # 12 images: groups and shards of 4 -> 3 shards
    kw = dict(group=4, shard_size=4)
    ref = _typ(tiny_model_dir, data, tmp_path / "ref", **kw)
    reference = _maps(ref)
    # the same store from another process (the CLI): the same files, byte for byte
    proc = _cli(["typicality", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "cli", "--draws", 2,
                 "--batch-size", 16, "--group", 4, "--shard-size", 4], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(p.name for p in ref.glob("shard-*.safetensors"))
    assert len(shards) == 3
    assert all((ref / s).read_bytes() == (tmp_path / "cli" / s).read_bytes() for s in shards)

    out = tmp_path / "typ"
    _typ(tiny_model_dir, data, out, **kw)
    last = out / shards[-1]  # the newest shard: a recomputed one would have been given its name again
    raw = bytearray(last.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit in the arrays: the header still reads, the checksum does not match
    last.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="damaged typicality shard.*delete this file and re-run") as err:
        _typ(tiny_model_dir, data, out, **kw)
    named = Path(str(err.value).split(": ")[0])
    assert named == last
    named.unlink()  # the advice, to the letter
    _typ(tiny_model_dir, data, out, **kw)
    verify_shards(out)
    _assert_same_maps(out, reference)


def test_a_truncated_manifest_says_how_to_recover_and_the_store_is_rebuilt(tiny_model_dir, color_dataset, tmp_path,
                                                                           capsys):
    out = _typ(tiny_model_dir, color_dataset, tmp_path / "typ", group=4, shard_size=4)
    reference = _maps(out)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(DataError, match=r"manifest.json: unreadable typicality manifest .*delete this file and re-run "
                                        r"`diffmine typicality` with the same --out: it rebuilds the manifest"):
        _typ(tiny_model_dir, color_dataset, out, group=4, shard_size=4)
    manifest.unlink()
    capsys.readouterr()
    computed = []
    _typ(tiny_model_dir, color_dataset, out, group=4, shard_size=4, on_image=computed.append)
    assert computed == []  # nothing recomputed: every shard was listed again from its own header
    assert "resuming: 12 of 12 images already stored" in capsys.readouterr().out
    _assert_same_maps(out, reference)


# -- 4. two writers into one folder ---------------------------------------------------------------
def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tiny_model_dir, color_dataset, tmp_path,
                                                                          capsys):
    from diffmine.core.lock import lock_path

    out = tmp_path / "typ"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom diffmine.core.lock import FolderLock\n"
                               f"FolderLock({str(out)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataError, match=rf"^{re.escape(str(out))} is being written by pid {holder.pid} on host "
                                            rf".* since .*; wait or remove {re.escape(str(lock_path(out)))} if that "
                                            "process is gone$"):
            _typ(tiny_model_dir, color_dataset, out)
        proc = _cli(["typicality", "--model", tiny_model_dir, "--data", color_dataset, "--out", out, "--draws", 2],
                    tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"diffmine typicality: error: {out} is being written by pid {holder.pid} " + proc.stderr.split(
                f"pid {holder.pid} ", 1)[1].strip()]
        assert not out.exists()  # the refused runs wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    capsys.readouterr()
    _typ(tiny_model_dir, color_dataset, out)  # the holder is gone: its lock is taken over, with a note
    assert f"taking over the lock of pid {holder.pid}, which is gone" in capsys.readouterr().err
    assert not lock_path(out).exists()  # given back at the end
    assert len(TypicalityStore.open(out)) == 12


def test_anomaly_fit_refuses_an_existing_detector(tmp_path):
    pytest.importorskip("pyod")
    from diffmine.apps.anomaly.config import AnomalyFitConfig
    from diffmine.apps.anomaly.run import fit_detector

    normal = make_color_dataset(tmp_path / "colors", n_per_label=3) / "red"
    cfg = AnomalyFitConfig(data=str(normal), out=str(tmp_path / "det"), model="tiny", draws=2, batch_size=8)
    fit_detector(cfg, progress=False)
    before = (tmp_path / "det" / "detector.json").read_bytes()
    with pytest.raises(DataError, match=r"det: already holds a detector .*pass --force to replace it"):
        fit_detector(cfg, progress=False)
    assert (tmp_path / "det" / "detector.json").read_bytes() == before
    cfg.force = True
    fit_detector(cfg, progress=False)


# -- the minor ones -------------------------------------------------------------------------------
def test_skip_bad_skips_bad_metadata_rows_and_every_image_command_has_it(tmp_path):
    from diffmine.cli import build_parser
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.inputs import ImageInput

    root = tmp_path / "d"
    root.mkdir()
    for k in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(root / f"{k}.png")
    (root / "metadata.csv").write_text("file_name,label\n0.png,a\nmissing.png,a\n1.png,\n2.png,b\n")
    with pytest.raises(DataError, match="row 3: file 'missing.png' does not exist"):
        LabeledImages(root)
    with pytest.warns(UserWarning, match=r"skipped 2 bad metadata row\(s\): .*row 3: file 'missing.png' does not "
                                         r"exist; .*row 4: empty label"):
        ds = LabeledImages(root, skip_bad=True)
    assert [r.image_id for r in ds] == ["0", "2"]
    (root / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 1 bad image\(s\): .*broken.png"):
        assert ImageInput(root, skip_bad=True).ids == ["0", "1", "2"]
    parser = build_parser()
    for argv in (["classify"], ["anomaly", "fit"], ["anomaly", "score"], ["changes"], ["typicality"], ["mine"],
                 ["finetune"], ["translate"], ["localize"]):
        assert parser.parse_args(argv + ["--skip-bad"]).skip_bad is True, argv


def test_images_far_below_the_resolution_are_named_once(tmp_path):
    from diffmine.core.dataset import LabeledImages

    root = tmp_path / "d" / "a"
    root.mkdir(parents=True)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "dot.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "fine.png")
    ds = LabeledImages(tmp_path / "d")
    with pytest.warns(UserWarning, match=r"1 image\(s\) smaller than a tenth of the model's 64 px .*dot.png \(1x1\)"):
        ds.load_arrays(64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.load_arrays(64)  # once per collection


def test_a_kill_mid_swap_leaves_one_whole_run_at_every_moment(tmp_path, monkeypatch):
    from diffmine.core import files

    out = tmp_path / "mine"
    owned = ("report.html", "clusters.csv", "patches")

    def run(version):
        with files.output_folder(out, owned=owned) as tmp:
            (tmp / "report.html").write_text(f"report {version}")
            (tmp / "clusters.csv").write_text(f"clusters {version}")
            (tmp / "patches").mkdir()
            (tmp / "patches" / "p.png").write_text(f"patch {version}")

    run(1)
    (out / ".partial").mkdir()
    (out / ".partial" / "kept").write_text("kept work")
    (out / "notes.txt").write_text("not the run's")
    real, calls = os.replace, [0]

    def dying(src, dst):
        calls[0] += 1
        if calls[0] == 3:  # 1: the journal; then the swap's moves: a kill after its first
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        run(2)
    monkeypatch.setattr(files.os, "replace", real)
    # what a reader sees now: the old run, whole
    assert [(out / n).read_text() for n in ("report.html", "clusters.csv", "patches/p.png")] == \
        ["report 1", "clusters 1", "patch 1"]
    files.finish_swap(out)  # what the next run does first
    assert [(out / n).read_text() for n in ("report.html", "clusters.csv", "patches/p.png")] == \
        ["report 2", "clusters 2", "patch 2"]
    assert (out / ".partial" / "kept").read_text() == "kept work" and (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")) == []


def test_the_clusters_hint_names_fewer_clusters_than_the_run_used(tiny_model_dir, tmp_path, capsys):
    from mining.config import MineConfig
    from mining.mine import run_mining

    root = tmp_path / "d"
    root.mkdir()
    for k, lab in enumerate("abc"):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
    (root / "metadata.csv").write_text("file_name,label\n0.png,a\n1.png,b\n2.png,c\n")
    typ = _typ(tiny_model_dir, root, tmp_path / "typ")
    run_mining(MineConfig(model=str(tiny_model_dir), data=str(root), typicality=str(typ), out=str(tmp_path / "m"),
                          per_image=1, clusters=2, min_members=1, min_images=2, dift_draws=1, kmeans_iter=3),
               progress=False)
    out = capsys.readouterr().out
    assert "lower them, or --clusters 1 for fewer, larger clusters" in out and "--clusters 2 for" not in out


def test_resumed_partial_work_says_what_it_reuses(tmp_path, capsys):
    import torch

    from diffmine.core.partial import PartialResults, fixed_groups, run_groups
    from diffmine.core.runtime import Runtime

    rt = Runtime(torch.device("cpu"), torch.float32)
    groups = fixed_groups([str(i) for i in range(5)], 2)

    def compute(group):
        return {i: {"x": np.zeros(1, np.float32)} for i in group}

    run_groups(groups[:2], compute, PartialResults(tmp_path / "p", {}), rt)
    assert "resuming" not in capsys.readouterr().out
    run_groups(groups, compute, PartialResults(tmp_path / "p", {}), rt)
    assert "resuming: 4 of 5 images already stored" in capsys.readouterr().out
