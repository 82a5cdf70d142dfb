"""The embedded towns dataset: deterministic, consistent ground truth, readable as a data folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffmine.core.dataset import LabeledImages
from diffmine.datasets.towns import (SHARED_KINDS, TOWNS, characteristic_kinds, contact_sheet, generate_towns,
                            render_facade)

N_TRAIN, N_TEST = 3, 2


@pytest.fixture(scope="module")
def towns(tmp_path_factory):
    return generate_towns(tmp_path_factory.mktemp("towns") / "towns", n_train=N_TRAIN, n_test=N_TEST, seed=7)


def _rows(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_towns_constants():
    assert len(TOWNS) == 4
    kinds = [k for ks in TOWNS.values() for k in ks]
    assert all(len(ks) == 2 for ks in TOWNS.values())
    assert len(set(kinds)) == len(kinds) and not set(kinds) & set(SHARED_KINDS)
    assert characteristic_kinds("brill") == list(TOWNS["brill"])
    with pytest.raises(ValueError, match="unknown town"):
        characteristic_kinds("atlantis")


def test_same_seed_same_bytes(towns, tmp_path):
    again = generate_towns(tmp_path / "again", n_train=N_TRAIN, n_test=N_TEST, seed=7)
    assert _files(again) == _files(towns)
    other = generate_towns(tmp_path / "other", n_train=N_TRAIN, n_test=N_TEST, seed=8)
    assert (other / "train" / "images").exists()
    assert _files(other / "train" / "images") != _files(towns / "train" / "images")


def test_ground_truth_is_consistent(towns):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        rows = _rows(towns / split)
        assert len(rows) == n * len(TOWNS)
        assert sorted({r["label"] for r in rows}) == sorted(TOWNS)
        for row in rows:
            assert row["split"] == split
            image = Image.open(towns / split / row["file_name"])
            mask = Image.open(towns / split / row["mask_file"])
            assert image.mode == "RGB" and image.size == (64, 64)
            assert mask.mode == "L" and mask.size == (64, 64)
            m = np.asarray(mask)
            elements = row["elements"]
            assert m.max() <= len(elements)
            own = [e for e in elements if e["label"] is not None]
            assert own, "every image shows at least one characteristic element"
            for k, e in enumerate(elements, start=1):
                x0, y0, x1, y1 = e["box"]
                assert all(isinstance(v, int) for v in e["box"])
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                ys, xs = np.nonzero(m == k)
                assert len(xs) > 0, f"{row['file_name']}: element {k} has no mask pixels"
                assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
                if e["label"] is None:
                    assert e["kind"] in SHARED_KINDS
                else:
                    assert e["label"] == row["label"]
                    assert e["kind"] in characteristic_kinds(row["label"])
            boxes = [e["box"] for e in elements]
            for i, a in enumerate(boxes):  # elements do not overlap (boxes may touch)
                for b in boxes[i + 1:]:
                    iw = min(a[2], b[2]) - max(a[0], b[0])
                    ih = min(a[3], b[3]) - max(a[1], b[1])
                    if iw > 0 and ih > 0:
                        assert min(iw, ih) <= 1


def test_splits_are_disjoint(towns):
    train = {r["file_name"] for r in _rows(towns / "train")}
    test = {r["file_name"] for r in _rows(towns / "test")}
    assert train and test and not train & test
    assert all("_test_" not in f for f in train) and all("_test_" in f for f in test)
    on_disk = {p.relative_to(towns / "train").as_posix() for p in (towns / "train" / "images").iterdir()}
    assert on_disk == train  # the held-out images live only under test/


def test_reads_as_a_labeled_data_folder(towns):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        data = LabeledImages(towns / split)
        assert len(data) == n * len(TOWNS)
        assert data.labels == sorted(TOWNS)
        assert all(len(r.labels) == 1 and r.row["label"] == r.labels[0] for r in data)
        assert data.records[0].row["elements"]
    _, arrays = LabeledImages(towns / "train").load_arrays(32)
    assert arrays.shape == (N_TRAIN * len(TOWNS), 3, 32, 32)


def test_reuse_and_regenerate(tmp_path):
    out = tmp_path / "t"
    generate_towns(out, n_train=1, n_test=1, seed=0)
    (out / "marker").write_text("kept if reused")
    assert generate_towns(out, n_train=1, n_test=1, seed=0) == out
    assert (out / "marker").exists()
    generate_towns(out, n_train=2, n_test=1, seed=0)  # other parameters: rebuilt
    assert not (out / "marker").exists()
    assert json.loads((out / "done.json").read_text())["n_train"] == 2
    assert len(_rows(out / "train")) == 2 * len(TOWNS)
    assert not list(tmp_path.glob(".t.tmp-*"))
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a towns dataset")
    with pytest.raises(FileExistsError):
        generate_towns(stranger, n_train=1, n_test=1)
    assert (stranger / "notes.txt").exists()


def test_scales_with_size_and_contact_sheet(towns, tmp_path):
    image, mask, elements = render_facade(np.random.default_rng([0, 0, 0, 0]), "ashford", size=128)
    assert image.size == mask.size == (128, 128)
    assert all(max(e["box"][2] - e["box"][0], e["box"][3] - e["box"][1]) >= 20 for e in elements
               if e["label"] is not None)
    sheet = contact_sheet(towns, tmp_path / "sheet.png", n_per_label=2)
    with Image.open(sheet) as im:
        assert im.size[1] > 4 * 2 * 64 // 2


def test_remix_is_another_dataset_from_the_same_renderer(tmp_path):
    """remix: other labels, its own characteristic kinds in the ground truth; towns unchanged."""
    import json

    from diffmine.datasets.towns import TOWN_SETS

    remix = TOWN_SETS["remix"]
    kinds = [k for ks in remix.towns.values() for k in ks]
    assert sorted(kinds + list(remix.shared)) == sorted([k for ks in TOWNS.values() for k in ks] + list(SHARED_KINDS))
    out = generate_towns(tmp_path / "remix", n_train=2, n_test=1, seed=1, variant="remix")
    rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert sorted({r["label"] for r in rows}) == sorted(remix.towns)
    for r in rows:
        for el in r["elements"]:
            assert el["label"] == (r["label"] if el["kind"] in remix.towns[r["label"]] else None)
        assert any(el["label"] == r["label"] for el in r["elements"])
    with pytest.raises(ValueError, match="unknown variant"):
        generate_towns(tmp_path / "x", variant="nope")
