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


@pytest.mark.slow
def test_assets_recipe_retrains_a_loadable_model(tmp_path):
    from diffusers import StableDiffusionPipeline

    model = build_assets(AssetsConfig(out=str(tmp_path / "assets"), work=str(tmp_path / "work")), towns={"n_train": 4, "n_test": 1}, vae_steps=2, max_steps=2, batch_size=8,
                         samples_per_label=1, progress=False)
    info = json.loads((model / "diffmine_train.json").read_text())
    assert info["steps"] == 2 and info["labels"] == ["ashford", "brill", "corran", "dunmore"]
    StableDiffusionPipeline.from_pretrained(model)
