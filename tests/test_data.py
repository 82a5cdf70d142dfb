"""The data reader on real files: both layouts, every Pillow mode, every bad-input case."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError
from diffmine.core.images import from_tensor_array, load_rgb, resize_crop, to_tensor_array
from diffmine.core.prompts import PRESETS, PromptTemplate, resolve_prompts


def _png(path, size=(40, 30), color=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_folder_layout_ids_and_labels(color_dataset):
    data = LabeledImages(color_dataset)
    assert data.labels == ["blue", "red"]
    assert len(data) == 12
    assert data[0].image_id == "blue/img_000" and data[0].labels == ("blue",)
    records, arrays = data.load_arrays(24)
    assert arrays.shape == (12, 3, 24, 24) and arrays.dtype == np.float32
    assert -1.0 <= arrays.min() and arrays.max() <= 1.0


def test_metadata_csv_multilabel(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png")
    (tmp_path / "metadata.csv").write_text("file_name,Finding Labels\na.png,Mass|Nodule\nsub/b.png,No Finding\n")
    data = LabeledImages(tmp_path, label_column="Finding Labels")
    assert [r.image_id for r in data] == ["a", "sub/b"]
    assert data[0].labels == ("Mass", "Nodule")
    assert data.labels == ["Mass", "No Finding", "Nodule"]
    assert PRESETS["chest_xray"].prompt(data[0].labels) == "Chest X-Ray with Mass, Nodule."


def test_metadata_jsonl_keeps_extra_columns(tmp_path):
    _png(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "label": "a", "elements": [1]}) + "\n")
    data = LabeledImages(tmp_path)
    assert data[0].row["elements"] == [1]


@pytest.mark.parametrize("case, message", [
    ("corrupt", "cannot read image|not a readable image"),
    ("missing_file", "row 3: file 'gone.png' does not exist"),
    ("unknown_column", "no column 'town'"),
    ("empty_label_dir", "label 'empty' has no images"),
    ("empty_folder", "no images found"),
    ("empty_label_value", "row 2: empty label"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, message):
    root = tmp_path / "data"
    root.mkdir()
    kwargs = {}
    if case == "corrupt":
        _png(root / "cats" / "ok.png")
        (root / "cats" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    elif case == "missing_file":
        _png(root / "a.png")
        (root / "metadata.csv").write_text("file_name,label\na.png,x\ngone.png,y\n")
    elif case == "unknown_column":
        _png(root / "a.png")
        (root / "metadata.csv").write_text("file_name,label\na.png,x\n")
        kwargs["label_column"] = "town"
    elif case == "empty_label_dir":
        _png(root / "full" / "a.png")
        (root / "empty").mkdir()
    elif case == "empty_label_value":
        _png(root / "a.png")
        (root / "metadata.csv").write_text("file_name,label\na.png,\n")
    with pytest.raises(DataError, match=message) as err:
        data = LabeledImages(root, **kwargs)
        data.load_arrays(16)
    text = str(err.value)
    assert "\n" not in text and str(root) in text


def test_truncated_image_and_skip_bad_warns_once(tmp_path):
    root = tmp_path / "data"
    _png(root / "a" / "good.png", size=(64, 64))
    good = (root / "a" / "good.png").read_bytes()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(root / "a" / "trunc.png")
    raw = (root / "a" / "trunc.png").read_bytes()
    (root / "a" / "trunc.png").write_bytes(raw[: len(raw) // 2])  # header fine, data cut
    (root / "a" / "junk.jpg").write_bytes(b"hello")
    with pytest.raises(DataError, match="junk.jpg"):
        LabeledImages(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = LabeledImages(root, skip_bad=True)
        records, arrays = data.load_arrays(16)
    assert [r.image_id for r in records] == ["a/good"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 bad image(s)" in messages[0]
    assert "junk.jpg" in messages[0] and "trunc.png" in messages[0]
    assert good == (root / "a" / "good.png").read_bytes()


def test_pillow_modes(tmp_path):
    # 16-bit X-ray: 12-bit values stored in I;16 must be stretched by their real range
    arr = np.linspace(100, 4000, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "xray.png")
    assert Image.open(tmp_path / "xray.png").mode.startswith("I")
    rgb = np.asarray(load_rgb(tmp_path / "xray.png"))
    assert rgb.shape == (32, 64, 3) and rgb.min() == 0 and rgb.max() == 255

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "rgba.png")
    assert np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [255, 255, 255]

    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    p.save(tmp_path / "p.png")
    assert np.asarray(load_rgb(tmp_path / "p.png"))[0, 0].tolist() == [0, 128, 255]

    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    assert np.asarray(load_rgb(tmp_path / "l.png"))[0, 0].tolist() == [77, 77, 77]

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    r, g, b = np.asarray(load_rgb(tmp_path / "c.jpg"))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_resize_crop_short_side():
    img = Image.new("RGB", (300, 150))
    assert resize_crop(img, 64).size == (64, 64)


def test_prompt_presets_and_validation():
    assert PRESETS["cars"].prompt("1970") == "A car from the 1970s."
    assert PRESETS["faces"].null_rate == 0.10
    p = resolve_prompts("street_view", null_rate=0.2)
    assert p.template == "A google street view image in {label}" and p.null_rate == 0.2
    with pytest.raises(ValueError, match="placeholder"):
        PromptTemplate("no label here")
    with pytest.raises(ValueError, match="unknown prompt preset"):
        resolve_prompts("dogs")


def test_cli_reports_bad_data_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "diffmine", "finetune", "--data", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "out"), "--base", "tiny"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"diffmine finetune: error: {tmp_path / 'empty'}: no images found"


def test_tensor_arrays_round_trip_to_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    arr = to_tensor_array(Image.fromarray(rgb))
    assert arr.shape == (3, 5, 7) and np.array_equal(from_tensor_array(arr), rgb)
    assert np.array_equal(from_tensor_array(np.stack([arr, arr])), np.stack([rgb, rgb]))  # a batch too
    # a decoder's overshoot is clipped, not wrapped around
    assert from_tensor_array(np.array([[[1.2]], [[-1.3]], [[0.0]]])).ravel().tolist() == [255, 0, 128]
