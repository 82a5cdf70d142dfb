"""Localisation: boxes (NIH and plain CSV), geometry, aliases, DICOM reading, metrics, and the command end to end."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from diffmine.evaluation.localization import auc_pr, iobb, pointing_hit, predicted_box, score_map, summarize
from diffmine.core.errors import DataError

warnings.filterwarnings("ignore", message=".*download failure.*")

FINDINGS = ["Cardiomegaly", "Effusion", "Infiltration", "No Finding", "Nodule"]


# -- metrics on hand-built maps -----------------------------------------------------------------
def test_auc_pr_known_value():
    # 2 positives ranked 1st and 3rd of 16 pixels: AP = (1/1 + 2/3) / 2
    m = np.arange(16, dtype=float).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask.flat[15] = mask.flat[13] = True
    assert auc_pr(m, mask) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(auc_pr(m, np.zeros((4, 4), bool)))


def test_predicted_box_iobb_and_pointing_known_values():
    m = np.zeros((10, 10))
    m[2:4, 2:6] = 1.0   # peak region: x 2..5, y 2..3
    m[2, 3] = 2.0       # the maximum
    m[8, 8] = 1.5       # another bright region, not connected to the peak
    assert predicted_box(m, 0.4) == (2, 2, 6, 4)
    truth = np.zeros((10, 10), bool)
    truth[0:3, 0:10] = True  # covers row 2 of the predicted box: 4 of its 8 pixels
    assert iobb((2, 2, 6, 4), truth) == pytest.approx(0.5)
    assert pointing_hit(m, truth) is True
    assert pointing_hit(m, ~truth) is False
    s = score_map(m, truth, 0.4)
    assert s["iobb"] == pytest.approx(0.5) and s["pred_box"] == (2, 2, 6, 4)
    # a higher threshold keeps only the maximum: its 1-pixel box lies inside the truth
    assert predicted_box(m, 0.9) == (3, 2, 4, 3)
    table = summarize([{"auc_pr": 0.2, "iobb": 0.3, "pointing": True},
                       {"auc_pr": float("nan"), "iobb": 0.05, "pointing": False}])
    assert table == {"auc_pr": 0.2, "iobb_0.1": 0.5, "iobb_0.25": 0.5, "iobb_0.5": 0.0, "pointing_game": 0.5,
                     "n_boxes": 2}


# -- boxes -------------------------------------------------------------------------------------
NIH = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
       "a.png,Infiltrate,10.5,20,30,40\n"
       "b.png,Nodule,1,2,3,4,,,\n")


def test_nih_and_plain_csv(tmp_path):
    from diffmine.apps.localize.boxes import read_boxes

    (tmp_path / "nih.csv").write_text(NIH)
    boxes = read_boxes(tmp_path / "nih.csv", FINDINGS)
    assert [(b.row, b.file_name, b.finding, b.xywh) for b in boxes] == [
        (2, "a.png", "Infiltration", (10.5, 20.0, 30.0, 40.0)), (3, "b.png", "Nodule", (1.0, 2.0, 3.0, 4.0))]
    (tmp_path / "plain.csv").write_text("file_name,label,x,y,w,h\nsub/c.dcm,Effusion,0,0,5,6\n")
    assert read_boxes(tmp_path / "plain.csv", FINDINGS)[0].xywh == (0.0, 0.0, 5.0, 6.0)


def test_bad_box_rows(tmp_path):
    from diffmine.apps.localize.boxes import read_boxes

    p = tmp_path / "b.csv"
    p.write_text("file_name,label,x,y,w,h\na.png,Nodule,1,2,3,4\nb.png,Nodule,1,2,0,4\n")
    with pytest.raises(DataError, match=r"b.csv row 3: box has zero or negative size"):
        read_boxes(p, FINDINGS)
    with pytest.warns(UserWarning, match=r"skipped 1 bad box row.*row 3"):
        assert len(read_boxes(p, FINDINGS, skip_bad=True)) == 1
    p.write_text("name,finding,x,y,w,h\na.png,Nodule,1,2,3,4\n")
    with pytest.raises(DataError, match="wrong columns"):
        read_boxes(p, FINDINGS)
    p.write_text("file_name,label,x,y,w,h\na.png,Atelectasis,1,2,3,4\n")
    with pytest.raises(DataError, match=r"row 2: finding 'Atelectasis' is not a label of the model "
                                        r"\(labels: Cardiomegaly, Effusion, Infiltration, No Finding, Nodule\)"):
        read_boxes(p, FINDINGS)
    # the alias maps the NIH spelling only onto a model that has 'Infiltration'...
    p.write_text("file_name,label,x,y,w,h\na.png,Infiltrate,1,2,3,4\n")
    with pytest.raises(DataError, match=r"finding 'Infiltrate' \(read as 'Infiltration'\) is not a label"):
        read_boxes(p, ["Mass", "Nodule"])
    # ...and a model whose label is spelled 'Infiltrate' keeps it
    assert read_boxes(p, ["Infiltrate", "Infiltration"])[0].finding == "Infiltrate"


def test_box_geometry_follows_the_loader_on_non_square_images(tmp_path):
    """A box drawn on a 200x100 original lands where resize_crop puts its pixels (64 px crop)."""
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.images import load_rgb, resize_crop
    from diffmine.apps.localize.boxes import Box, place_boxes

    img = np.zeros((100, 200), np.uint8)
    img[40:60, 110:130] = 255  # x 110..129, y 40..59 in the original
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(img).save(root / "wide.png")
    (root / "metadata.csv").write_text("file_name,label\nwide.png,Nodule\n")
    ds = LabeledImages(root)
    inside, outside = place_boxes([Box(2, "wide.png", "Nodule", (110, 40, 20, 20)),
                                   Box(3, "wide.png", "Nodule", (0, 0, 10, 10))], ds, 64)
    # scale 0.64 -> 128x64, centre crop left 32: x 110*0.64-32 = 38.4 .. 51.2, y 25.6 .. 38.4
    assert inside[0].xyxy == pytest.approx((38.4, 25.6, 51.2, 38.4))
    assert [b.box.row for b in outside] == [3]  # left of the crop: reported, not scored
    crop = np.asarray(resize_crop(load_rgb(root / "wide.png"), 64))[..., 0]
    ys, xs = np.nonzero(crop > 127)  # the square's pixels after the loader's resize + crop
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (38, 26, 51, 38)
    from diffmine.evaluation.groundtruth import rasterize_boxes
    assert (rasterize_boxes([inside[0].xyxy], 64)[0] == (crop > 127)).all()


def test_box_rows_naming_missing_images(tmp_path):
    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.localize.boxes import Box, place_boxes

    root = tmp_path / "data"
    root.mkdir()
    for n in ("a.png", "extra.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / n)
    (root / "metadata.csv").write_text("file_name,label\na.png,Nodule\n")
    ds = LabeledImages(root)
    with pytest.raises(DataError, match=r"boxes.csv row 5: image 'gone.png' does not exist in"):
        place_boxes([Box(5, "gone.png", "Nodule", (0, 0, 2, 2))], ds, 8, "boxes.csv")
    with pytest.raises(DataError, match=r"row 6: image 'extra.png' is in .* but not in its data set"):
        place_boxes([Box(6, "extra.png", "Nodule", (0, 0, 2, 2))], ds, 8, "boxes.csv")


# -- DICOM ---------------------------------------------------------------------------------------
def _window_reference(values, center, width):
    """DICOM PS3.3 C.11.2.1.2 linear window, written out by hand, to [0, 255]."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5)
    return np.round(np.clip(y, 0, 1) * 255)


def test_dicom_mr_window_ct_full_range_and_monochrome1(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from diffmine.core.images import load_rgb

    mr_path = get_testdata_file("MR_small.dcm")
    mr = pydicom.dcmread(mr_path)
    got = np.asarray(load_rgb(mr_path))
    assert got.shape == (64, 64, 3) and (got[..., 0] == got[..., 2]).all()
    ref = _window_reference(mr.pixel_array.astype(float), float(mr.WindowCenter), float(mr.WindowWidth))
    assert np.abs(got[..., 0].astype(float) - ref).max() <= 1

    ct_path = get_testdata_file("CT_small.dcm")
    ct = pydicom.dcmread(ct_path)
    hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    ref = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255)  # no window in the file: full range
    assert np.abs(np.asarray(load_rgb(ct_path))[..., 0].astype(float) - ref).max() <= 1

    mr.PhotometricInterpretation = "MONOCHROME1"  # none ships: the same pixels, read as inverted
    mr.save_as(tmp_path / "mono1.dcm")
    inv = np.asarray(load_rgb(tmp_path / "mono1.dcm"))[..., 0].astype(float)
    assert np.abs(inv - (255 - _window_reference(mr.pixel_array.astype(float), float(mr.WindowCenter),
                                                 float(mr.WindowWidth)))).max() <= 1


def test_dicom_errors_and_dataset(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from diffmine.core.dataset import LabeledImages
    from diffmine.core.images import load_rgb

    with pytest.raises(DataError, match=r"rtplan.dcm: DICOM holds no image"):
        load_rgb(get_testdata_file("rtplan.dcm"))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mr.NumberOfFrames = 3
    mr.save_as(tmp_path / "multi.dcm")
    with pytest.raises(DataError, match=r"multi.dcm: multi-frame DICOM \(3 frames\)"):
        load_rgb(tmp_path / "multi.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DataError, match=r"junk.dcm: cannot read DICOM"):
        load_rgb(tmp_path / "junk.dcm")
    # a folder-per-label data set takes DICOM like PNG
    root = tmp_path / "data" / "mr"
    root.mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "scan.dcm")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "other.png")
    ds = LabeledImages(tmp_path / "data")
    assert [r.image_id for r in ds] == ["mr/other", "mr/scan"]
    _, arrays = ds.load_arrays(32)
    assert arrays.shape == (2, 3, 32, 32) and arrays[1].std() > 0.1


# -- synthetic data and the command end to end ---------------------------------------------------
def test_synthetic_radiographs_are_deterministic_and_boxed(tmp_path):
    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.localize.boxes import place_boxes, read_boxes
    from diffmine.datasets.radiographs import write_split

    a = write_split(tmp_path / "a", 20, seed=3, dicom_every=5)
    b = write_split(tmp_path / "b", 20, seed=3, dicom_every=5)
    assert (a / "BBox_List_2017.csv").read_text() == (b / "BBox_List_2017.csv").read_text()
    assert (a / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    ds = LabeledImages(a)
    assert sum(r.path.suffix == ".dcm" for r in ds) == 4
    assert any(len(r.labels) == 2 for r in ds) and any(r.labels == ("No Finding",) for r in ds)
    boxes = read_boxes(a / "BBox_List_2017.csv", FINDINGS)
    inside, outside = place_boxes(boxes, ds, 64)
    assert not outside and len(inside) == len(boxes)
    # every finding of every image has its box; the DICOM images read as their PNG twins would
    assert sorted((b.image_id, b.finding) for b in inside) == sorted(
        (r.image_id, f) for r in ds for f in r.labels if f != "No Finding")


@pytest.fixture(scope="module")
def xray_model(tmp_path_factory):
    from diffmine.core.tiny import build_tiny_bundle
    from diffmine.core.prompts import PRESETS

    out = tmp_path_factory.mktemp("xray_model")
    build_tiny_bundle(resolution=32).save_pretrained(out)
    PRESETS["chest_xray"].save(out)
    (out / "diffmine_train.json").write_text(json.dumps({"labels": FINDINGS}))
    return out


def test_run_localize_end_to_end(tmp_path, xray_model):
    from diffmine.apps.localize.config import LocalizeConfig
    from diffmine.apps.localize.run import localization_table, run_localize
    from diffmine.datasets.radiographs import write_split

    data = write_split(tmp_path / "xray", 8, seed=1, dicom_every=4)
    out = tmp_path / "loc"
    cfg = LocalizeConfig(model=str(xray_model), data=str(data), boxes=str(data / "BBox_List_2017.csv"),
                         out=str(out), base_model=str(xray_model), draws=4, show=2)
    metrics = run_localize(cfg, progress=False)
    n_boxes = len((data / "BBox_List_2017.csv").read_text().splitlines()) - 1
    assert metrics["overall"]["n_boxes"] == n_boxes
    assert sum(v["n_boxes"] for v in metrics["findings"].values()) == n_boxes
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["overall"]["auc_pr"] == pytest.approx(metrics["overall"]["auc_pr"])
    # the base model here is the same model: its maps and metrics are identical
    assert saved["overall"]["base_auc_pr"] == pytest.approx(saved["overall"]["auc_pr"])
    lines = (out / "per_image.csv").read_text().splitlines()
    assert len(lines) == n_boxes + 1 and lines[0].startswith("image_id,file_name,box_row,finding,auc_pr")
    html = (out / "report.html").read_text()
    figs = [l for l in html.split("'") if l.startswith("overlays/")]
    assert figs and all((out / f).is_file() for f in figs)
    assert json.loads((out / "config.json").read_text())["draws"] == 4
    # the Python entry: a store and boxes -> the same table
    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.localize.boxes import place_boxes, read_boxes

    placed, _ = place_boxes(read_boxes(data / "BBox_List_2017.csv", FINDINGS), LabeledImages(data), 32)
    table, rows = localization_table(out / "typicality", placed)
    assert table["overall"]["auc_pr"] == pytest.approx(metrics["overall"]["auc_pr"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loc.tmp")]


def test_run_localize_bad_input_leaves_nothing(tmp_path, xray_model):
    from diffmine.apps.localize.config import LocalizeConfig
    from diffmine.apps.localize.run import run_localize
    from diffmine.datasets.radiographs import write_split

    data = write_split(tmp_path / "xray", 4, seed=1)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file_name,label,x,y,w,h\n" + (data / "BBox_List_2017.csv").read_text().splitlines()[1]
                     + "\nmissing.png,Nodule,1,1,4,4\n")
    cfg = LocalizeConfig(model=str(xray_model), data=str(data), boxes=str(boxes), out=str(tmp_path / "loc"), draws=2)
    with pytest.raises(DataError, match=r"boxes.csv row 3: image 'missing.png' does not exist"):
        run_localize(cfg, progress=False)
    assert not (tmp_path / "loc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loc")]
    cfg.skip_bad = True
    with pytest.warns(UserWarning, match="skipped 1 box row"):
        metrics = run_localize(cfg, progress=False)
    assert metrics["overall"]["n_boxes"] == 1
    # an unreadable DICOM in the data set: one line naming it, nothing written
    (data / "broken.dcm").write_bytes(b"\0" * 200)
    (data / "metadata.csv").write_text((data / "metadata.csv").read_text() + "broken.dcm,Nodule\n")
    boxes.write_text("file_name,label,x,y,w,h\nbroken.dcm,Nodule,1,1,4,4\n")
    cfg = LocalizeConfig(model=str(xray_model), data=str(data), boxes=str(boxes), out=str(tmp_path / "loc2"),
                         draws=2)
    with pytest.raises(DataError, match=r"broken.dcm: cannot read DICOM"):
        run_localize(cfg, progress=False)
    assert not (tmp_path / "loc2").exists()
    bad = LocalizeConfig(model=str(xray_model), data=str(data), boxes=str(boxes), out=str(tmp_path / "x"),
                         t_range=(0.5, 0.2))
    with pytest.raises(DataError, match="t_range must be two fractions"):
        run_localize(bad, progress=False)


# -- runtime: --model tiny, processes, kill and resume ---------------------------------------------
@pytest.fixture(scope="module")
def loc_reference(xray_model, tmp_path_factory):
    """Six boxed radiographs, and their localisation by one process (finetuned and base maps)."""
    from diffmine.apps.localize.run import run_localize
    from diffmine.datasets.radiographs import write_split

    root = tmp_path_factory.mktemp("loc_ref")
    data = write_split(root / "xray", 6, seed=2, dicom_every=3)
    run_localize(_loc_cfg(xray_model, data, root / "loc"), progress=False)
    return data, root / "loc"


def _loc_cfg(model, data, out, **kw):
    from diffmine.apps.localize.config import LocalizeConfig

    return LocalizeConfig(**{"model": str(model), "data": str(data), "boxes": str(data / "BBox_List_2017.csv"),
                             "out": str(out), "base_model": str(model), "draws": 2, "show": 1, "group": 2, **kw})


def _same_tables(a, b):
    """metrics.json and per_image.csv of two runs, byte for byte."""
    for name in ("metrics.json", "per_image.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_localize_model_tiny(tmp_path):
    """`--model tiny`: the shipped towns model, its labels as findings."""
    from diffmine.apps.localize.config import LocalizeConfig
    from diffmine.apps.localize.run import run_localize
    from diffmine.datasets.towns import render_facade

    rng = np.random.default_rng(0)
    lines = ["file_name,label,x,y,w,h"]
    for town in ("ashford", "brill"):
        (tmp_path / "data" / town).mkdir(parents=True)
        Image.fromarray(np.asarray(render_facade(rng, town)[0])).save(tmp_path / "data" / town / "0.png")
        lines.append(f"{town}/0.png,{town},8,8,24,24")
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    metrics = run_localize(LocalizeConfig(model="tiny", data=str(tmp_path / "data"), boxes=str(tmp_path / "boxes.csv"),
                                          out=str(tmp_path / "loc"), draws=2, show=1), progress=False)
    assert metrics["overall"]["n_boxes"] == 2 and set(metrics["findings"]) == {"ashford", "brill"}
    assert (tmp_path / "loc" / "typicality" / "manifest.json").is_file() and not (tmp_path / "loc" / ".images").exists()
    with pytest.raises(DataError, match="no such folder"):
        run_localize(LocalizeConfig(model=str(tmp_path / "nope"), data=str(tmp_path / "data"),
                                    boxes=str(tmp_path / "boxes.csv"), out=str(tmp_path / "x")), progress=False)


def test_localize_accelerate_launch_two_processes(xray_model, loc_reference, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    data, ref = loc_reference
    out = tmp_path / "launched"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "localize", "--model", str(xray_model), "--base-model", str(xray_model), "--data", str(data),
           "--boxes", str(data / "BBox_List_2017.csv"), "--out", str(out), "--draws", "2", "--show", "1",
           "--group", "2"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1  # the main process scores and reports
    manifest = json.loads((out / "typicality" / "manifest.json").read_text())
    assert manifest["meta"]["draws"] == 2
    # groups of two images are batched on their own, whatever the process: the files of one process
    _same_tables(out, ref)
    assert not (out / ".images").exists()


def test_localize_simulated_split_then_one_process(xray_model, loc_reference, tmp_path):
    from diffmine.apps.localize.run import run_localize

    data, ref = loc_reference
    out = tmp_path / "loc"
    for i in range(2):
        assert run_localize(_loc_cfg(xray_model, data, out, process_index=i, num_processes=2), progress=False) is None
    assert not (out / "metrics.json").exists()
    run_localize(_loc_cfg(xray_model, data, out), progress=False)
    _same_tables(out, ref)


def _run_killed(cfg, patch: str) -> None:
    """`run_localize(cfg)` in a child process with `patch` (code that SIGKILLs it at some point) applied first."""
    import os
    import signal
    import subprocess
    import sys

    script = ("import os, signal, json\n" + patch
              + "from diffmine.apps.localize.config import LocalizeConfig\nfrom diffmine.apps.localize.run import run_localize\n"
              f"run_localize(LocalizeConfig(**json.loads({json.dumps(json.dumps(cfg.__dict__))})), progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_localize_killed_then_resumed(xray_model, loc_reference, tmp_path):
    from diffmine.apps.localize.run import run_localize

    data, ref = loc_reference
    out = tmp_path / "loc"
    cfg = _loc_cfg(xray_model, data, out)
    # SIGKILLed as it starts the base model's maps: the finetuned store is complete by then
    _run_killed(cfg, "from typicality import engine\nreal = engine.run_typicality\n"
                "def dying(cfg, **kw):\n    if cfg.out.endswith('typicality_base'): os.kill(os.getpid(), signal.SIGKILL)\n"
                "    return real(cfg, **kw)\n"
                "engine.run_typicality = dying\n")
    shards = {p: p.stat().st_mtime_ns for p in (out / "typicality").glob("shard-*")}
    assert shards and not (out / "typicality_base").exists() and not (out / "metrics.json").exists()
    run_localize(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "typicality").glob("shard-*")} == shards  # not redone
    _same_tables(out, ref)
    # other settings into the same folder: the maps are recomputed, as a fresh run would
    metrics = run_localize(_loc_cfg(xray_model, data, out, draws=4, base_model=None), progress=False)
    assert json.loads((out / "typicality" / "config.json").read_text())["draws"] == 4 and metrics["draws"] == 4


def test_localize_killed_in_its_first_minute_keeps_its_finished_groups(xray_model, loc_reference, tmp_path):
    """SIGKILLed as its second group of maps ends, seconds into the run: the first group is in the store
    already (a shard at every group's end), and the rerun computes only the other images."""
    from diffmine.apps.localize.run import run_localize
    from typicality.store import TypicalityStore

    data, ref = loc_reference
    out = tmp_path / "loc"
    cfg = _loc_cfg(xray_model, data, out)
    _run_killed(cfg, "from typicality import store\nend = store.ShardWriter.end_group\nn = [0]\n"
                "def dying(self):\n    n[0] += 1\n    if n[0] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
                "    return end(self)\n"
                "store.ShardWriter.end_group = dying\n")
    kept = TypicalityStore.open(out / "typicality").image_ids
    assert len(kept) == 2 and not (out / "metrics.json").exists()  # the first group of two images
    computed = []
    from typicality import engine
    real = engine.run_typicality
    engine.run_typicality = lambda tcfg, **kw: real(tcfg, on_image=computed.append, **kw)
    try:
        run_localize(cfg, progress=False)
    finally:
        engine.run_typicality = real
    n = len(TypicalityStore.open(ref / "typicality").image_ids)  # the boxed images, each in both stores
    assert len(computed) == 2 * n - 2 and not set(kept) & set(computed[:n - 2])  # the kept group is not redone
    _same_tables(out, ref)
