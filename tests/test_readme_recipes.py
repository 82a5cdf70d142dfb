"""The README's recipes, run as written on the shipped small model.

Each recipe is the bash block after a `<!-- recipe: NAME -->` line of README.md. The test keeps its
commands as they are and only (1) sets its variables to small local data and `MODEL=tiny`, and
(2) appends small settings to each command (argparse keeps the last value of a flag given twice),
then runs the block with bash in one working folder, recipes in README order (translation and
classify reuse the model the mining recipe finetuned), and checks the output files each recipe names.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_digits_folder
from diffmine.datasets.radiographs import write_split
from diffmine.datasets.towns import generate_towns

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# small settings per command, appended after the recipe's own flags
TINY = {
    "finetune": "--max-steps 2 --batch-size 4 --samples-per-label 1 --mixed-precision no --vae-steps 2",
    "typicality": "--draws 2",
    "mine": "--clusters 2 --per-image 1 --dift-draws 1 --min-members 1 --min-images 1",
    "localize": "--draws 2",
    "translate": "--steps 2 --inversion-steps 2",
    "changes": "--draws 2 --clusters 2 --per-image 1 --top 8 --dift-draws 1 --min-members 1 --min-images 1",
    "anomaly fit": "--draws 2",
    "anomaly score": "",
    "classify": "--draws 2 --first-draws 1 --keep 1",
}
DATA = {"MODEL": "tiny", "PHOTOS": "data/cars", "NIH": "data/nih", "NORMAL": "data/parts/normal",
        "INCOMING": "data/parts/incoming", "FOLDER": "data/digits"}
# what each recipe promises (README: the output files under each block)
OUTPUTS = {
    "laptop": ["runs/my-model/model_index.json", "runs/my-model/diffmine_train.json",
               "runs/my-typicality/manifest.json", "runs/my-mine/report.html"],
    "mining": ["runs/cars-model/model_index.json", "runs/cars-model/samples.png",
               "runs/cars-typicality/manifest.json", "runs/cars-mine/report.html", "runs/cars-mine/clusters.csv"],
    "xray": ["runs/xray-model/model_index.json", "runs/xray-localize/metrics.json",
             "runs/xray-localize/per_image.csv", "runs/xray-localize/report.html"],
    "translation": ["runs/cars-translate/index.html", "runs/cars-translate/translations.csv",
                    "runs/cars-changes/report.html", "runs/cars-changes/clusters.csv"],
    "anomaly": ["runs/parts-detector/detector.json", "runs/parts-scores.csv",
                "runs/cars-classify/classification.json", "runs/cars-classify/predictions.csv"],
}


def recipes(text: str) -> dict[str, list[str]]:
    """NAME -> the commands of its bash block (continuation lines joined)."""
    found = {}
    for name, block in re.findall(r"<!-- recipe: (\w+) -->\s*```bash\n(.*?)```", text, flags=re.S):
        found[name] = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def tiny_script(lines: list[str]) -> str:
    out = []
    for line in lines:
        var = re.match(r"^([A-Z_]+)=", line)
        if var:
            out.append(f"{var.group(1)}={DATA[var.group(1)]}")
            continue
        cmd = re.match(r"^diffmine (anomaly \w+|\w+)", line)
        assert cmd, f"not a diffmine command: {line}"
        out.append(f"{line} {TINY[cmd.group(1)]}")
    return "set -euo pipefail\n" + "\n".join(out) + "\n"


def test_every_recipe_is_found_and_names_known_commands():
    found = recipes((ROOT / "README.md").read_text(encoding="utf-8"))
    assert list(found) == list(OUTPUTS)
    for lines in found.values():
        tiny_script(lines)  # every variable and command has its small setting
    assert recipes("<!-- recipe: x -->\n```bash\nA=1\n```") == {"x": ["A=1"]}  # the parser reads a block


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipes")
    towns = generate_towns(work / "towns", n_train=3, n_test=2)
    (work / "data").mkdir()
    shutil.copytree(towns / "train", work / "data" / "cars")
    make_digits_folder(work / "data" / "digits", ("zero", "one"))  # foreign to the small base: its VAE adapts
    shutil.copytree(towns / "train" / "images", work / "data" / "parts" / "normal")  # images only, no masks
    shutil.copytree(towns / "test" / "images", work / "data" / "parts" / "incoming")
    nih = write_split(work / "data" / "nih", n=16, seed=0, dicom_every=4)
    meta = (nih / "metadata.csv").read_text().splitlines()
    meta[0] = meta[0].replace("label", "Finding Labels")  # NIH's column name
    (nih / "metadata.csv").write_text("\n".join(meta) + "\n")
    return work


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_recipe_runs_as_written(name, workdir):
    lines = recipes((ROOT / "README.md").read_text(encoding="utf-8"))[name]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-c", tiny_script(lines)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for rel in OUTPUTS[name]:
        assert (workdir / rel).is_file(), f"{name}: {rel} missing"
    if name == "laptop":
        info = json.loads((workdir / "runs/my-model/diffmine_train.json").read_text())
        assert info["vae_adapted_steps"] == 2 and info["reconstruction_before_adapt_psnr_db"] < 24
    if name == "xray":
        metrics = json.loads((workdir / "runs/xray-localize/metrics.json").read_text())
        assert metrics["overall"]["n_boxes"] > 0
    if name == "anomaly":
        rows = list(csv.DictReader(open(workdir / "runs/parts-scores.csv")))
        incoming = list((workdir / "data/parts/incoming").rglob("*.png"))
        assert len(rows) == len(incoming) > 0
        assert any((workdir / "runs/parts-maps").glob("*.png"))
