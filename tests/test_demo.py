"""`diffmine demo` end to end on reduced settings, and the `make assets` recipe on a few steps."""
import json

import pytest

from diffmine.apps.demo.run import AssetsConfig, DemoConfig, build_assets, run_demo


@pytest.mark.slow
def test_demo_pipeline_writes_report_and_metrics(tmp_path):
    metrics = run_demo(DemoConfig(out=str(tmp_path / "demo"), fast=True), progress=False)
    on_disk = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for key in ("pointing_game", "pixel_auroc", "elements_recovered", "shared_over_characteristic", "wall_s"):
        assert on_disk[key] is not None and key in metrics
    # the shipped model localises town elements far above chance even on 4 draws per image
    assert on_disk["pointing_game"] > 0.5 and on_disk["pixel_auroc"] > 0.75
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "ashford" in html and "dunmore" in html
    assert set(on_disk["targets"]) == {"pointing_game", "pixel_auroc", "elements_recovered",
                                       "shared_over_characteristic"}
    # every figure carries its interval, and it brackets the figure
    for key in ("pointing_game", "pixel_auroc", "characteristic_vs_shared_auroc", "shared_over_characteristic"):
        lo, hi = on_disk[f"{key}_ci"]
        assert lo <= on_disk[key] <= hi
    assert on_disk["characteristic_vs_shared_auroc"] > 0.5  # the maps know labels, not just elements
    assert len(on_disk["pairs"]) == len({p["image"] for p in on_disk["pairs"]}) == 160  # a row per held-out image


def test_a_target_counts_as_met_by_its_interval_only_when_the_interval_clears_it():
    from diffmine.apps.demo.run import target_check

    m = {"a": 0.954, "a_ci": [0.941, 0.965], "b": 1.0, "b_ci": [0.63, 1.0], "c": 0.05, "c_ci": [0.03, 0.08]}
    assert target_check(m, "a", ">=", 0.95) == {"target": ">= 0.95", "value": 0.954, "ci": [0.941, 0.965],
                                                "met": True, "interval_clears": False}
    assert target_check(m, "b", ">=", 1.0)["interval_clears"] is False  # 8 of 8: the interval reaches 0.63
    assert target_check(m, "c", "<", 0.10)["interval_clears"] is True
    assert target_check(m, "a", ">=", 0.96)["met"] is False


@pytest.mark.slow
def test_assets_recipe_retrains_a_loadable_model(tmp_path):
    from diffusers import StableDiffusionPipeline

    model = build_assets(AssetsConfig(out=str(tmp_path / "assets"), work=str(tmp_path / "work")), towns={"n_train": 4, "n_test": 1}, vae_steps=2, max_steps=2, batch_size=8,
                         samples_per_label=1, progress=False)
    info = json.loads((model / "diffmine_train.json").read_text())
    assert info["steps"] == 2 and info["labels"] == ["ashford", "brill", "corran", "dunmore"]
    StableDiffusionPipeline.from_pretrained(model)
