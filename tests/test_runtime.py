"""The runtime under every command: where models run, and which share of the work a process takes.

The placement test swaps the runtime's device policy for one that no command would pick by itself
(bfloat16 on the CPU) and records every UNet forward of every command: a command that loaded its
model or chose its device on its own would run in float32 and fail it. The finetuner trains float32
weights: its forwards must compute in the runtime's dtype (autocast) on its device."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffmine.core import runtime
from diffmine.core.errors import DataError
from diffmine.core.partial import PartialResults, fixed_groups, run_groups
from diffmine.core.placement import misplaced, record_forwards
from diffmine.core.runtime import Runtime, RuntimeSettings, default_policy, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]


def test_default_policy_without_a_gpu():
    assert default_policy("auto", "auto", None) == (torch.device("cpu"), torch.float32)
    assert default_policy("cpu", "bf16", None) == (torch.device("cpu"), torch.bfloat16)
    # accelerate's device for this process wins under a launch
    assert default_policy("auto", "fp32", torch.device("cuda", 1))[0] == torch.device("cuda", 1)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="--device cuda: this machine has no CUDA GPU"):
            default_policy("cuda", "auto", None)
    with pytest.raises(DataError, match="--device gpu0: not a device name"):
        default_policy("gpu0", "auto", None)
    assert resolve_dtype("fp16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_share_is_fixed_by_rank_and_load_places_the_model(monkeypatch, tmp_path):
    rt = Runtime.start(RuntimeSettings(process_index=1, num_processes=3))
    assert (rt.rank, rt.world, rt.is_main, rt.launched) == (1, 3, False, False)
    assert rt.share(list("abcdefg")) == ["b", "e"]
    monkeypatch.setattr(runtime, "POLICY", lambda device, dtype, accel: (torch.device("cpu"), torch.bfloat16))
    rt = Runtime.start(RuntimeSettings(process_index=0, num_processes=1))
    model = rt.load("tiny")
    assert model.labels == ["ashford", "brill", "corran", "dunmore"]  # the shipped model's towns
    assert model.prompts.template == "A facade in {label}."
    for part in (model.bundle.unet, model.bundle.vae, model.bundle.text_encoder):
        assert next(part.parameters()).dtype is torch.bfloat16
    rt.check_placement(model.bundle.unet)
    with pytest.raises(RuntimeError, match="the runtime chose cpu in torch.bfloat16"):
        rt.check_placement(torch.nn.Linear(2, 2))
    with pytest.raises(DataError, match=f"model {tmp_path / 'nosuch'}: no such folder"):
        rt.load(tmp_path / "nosuch")
    # read from the configs without loading a weight: what the loaded model says
    from diffmine.core.models import model_resolution

    assert model_resolution("tiny") == model.bundle.resolution == 64
    assert model_resolution(tmp_path) is None  # a folder without the configs


def test_partial_results_resume_and_refuse_other_settings(tmp_path):
    import numpy as np

    rt = Runtime(torch.device("cpu"), torch.float32)
    store = PartialResults(tmp_path / "p", {"draws": 4})
    calls = []

    def compute(group):
        calls.append(list(group))
        return {i: {"x": np.full(2, int(i), np.float32)} for i in group}

    groups = fixed_groups([str(i) for i in range(5)], 2)
    assert groups == [["0", "1"], ["2", "3"], ["4"]]
    run_groups(groups[:2], compute, store, rt)
    run_groups(groups, compute, PartialResults(tmp_path / "p", {"draws": 4}), rt)  # a rerun: only the new group
    assert calls == [["0", "1"], ["2", "3"], ["4"]]
    got = PartialResults(tmp_path / "p", {"draws": 4}).read_all()
    assert sorted(got) == list("01234") and got["3"]["x"].tolist() == [3.0, 3.0]
    with pytest.raises(DataError, match="holds partial results of a run with other settings"):
        PartialResults(tmp_path / "p", {"draws": 8})
    # process 1 of 2 takes groups 1, 3, ...
    calls.clear()
    run_groups(groups, compute, PartialResults(tmp_path / "q", {}, rank=1), Runtime(torch.device("cpu"),
                                                                                     torch.float32, 1, 2))
    assert calls == [["2", "3"]]
    # the progress bar counts process 0's own share (groups 0 and 2: three images), not all five
    import io

    from tqdm.auto import tqdm

    with tqdm(total=5, desc="typicality", file=io.StringIO()) as bar:
        run_groups(groups, compute, PartialResults(tmp_path / "r", {}, rank=0),
                   Runtime(torch.device("cpu"), torch.float32, 0, 2), bar)
        assert (bar.n, bar.total) == (3, 3) and bar.desc == "typicality (process 1 of 2)"


@pytest.fixture
def recorded_forwards(monkeypatch):
    """bf16 on the CPU as the runtime's choice; every UNet forward's (weights dtype, input dtype, device)."""
    chosen = (torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(runtime, "POLICY", lambda device, dtype, accel: chosen)
    with record_forwards(parts=("unet",)) as seen:  # the benchmarks' recorder: one copy of the hook
        yield seen


def _check(seen, command):
    assert seen, f"{command}: no UNet forward was recorded"
    if command == "finetune":  # trained weights stay float32; each forward computes in the runtime's dtype
        wrong = {(s.device, s.compute) for s in misplaced(seen, "cpu", torch.bfloat16)}
    else:
        wrong = {s.placement for s in seen if s.placement != ("cpu", torch.bfloat16, torch.bfloat16)}
    assert not wrong, f"{command}: UNet ran as {wrong}, the runtime chose cpu / bfloat16"
    seen.clear()


@pytest.mark.slow
def test_every_command_runs_its_unet_where_the_runtime_chose(recorded_forwards, tmp_path):
    """Each model-running command, with `--model tiny`, under a policy no command would choose itself."""
    from diffmine.cli import main
    from diffmine.datasets.radiographs import write_split
    from diffmine.datasets.towns import generate_towns

    def run(*argv):
        assert main([str(a) for a in argv]) == 0, argv
        _check(recorded_forwards, argv[0] if argv[0] != "anomaly" else " ".join(argv[:2]))

    t = tmp_path
    data = generate_towns(t / "towns", n_train=2, n_test=1, size=32, seed=2) / "train"  # the tiny model's labels
    run("finetune", "--base", "tiny", "--data", data, "--out", t / "ft", "--resolution", 32, "--max-steps", 2,
        "--batch-size", 2, "--samples-per-label", 1, "--adapt-vae", "never")  # its training and its samples
    run("typicality", "--model", "tiny", "--data", data, "--out", t / "typ", "--draws", 2)
    run("mine", "--model", "tiny", "--data", data, "--typicality", t / "typ", "--out", t / "mine",
        "--per-image", 1, "--clusters", 2, "--min-members", 1, "--min-images", 1, "--dift-draws", 1)
    run("translate", "--model", "tiny", "--data", data, "--out", t / "tr", "--to", "all", "--steps", 2,
        "--inversion-steps", 2)
    run("changes", "--model", "tiny", "--translations", t / "tr", "--out", t / "ch", "--draws", 2, "--clusters", 2,
        "--dift-draws", 1, "--min-members", 1, "--min-images", 1)
    run("classify", "--model", "tiny", "--data", data, "--out", t / "cls", "--draws", 2, "--first-draws", 1,
        "--keep", 2)
    from conftest import make_color_dataset

    normal = make_color_dataset(t / "colors", n_per_label=3)
    run("anomaly", "fit", "--model", "tiny", "--data", normal / "red", "--out", t / "det", "--draws", 2)
    run("anomaly", "score", "--detector", t / "det", "--data", normal, "--out", t / "scores.csv")
    xray = write_split(t / "xray", 4, seed=1)
    from diffmine.core.prompts import PRESETS
    from diffmine.core.tiny import build_tiny_bundle
    from diffmine.datasets.radiographs import FINDINGS

    build_tiny_bundle(resolution=32).save_pretrained(t / "xray-model")  # a model of the findings' labels
    PRESETS["chest_xray"].save(t / "xray-model")
    (t / "xray-model" / "diffmine_train.json").write_text(json.dumps({"labels": [*FINDINGS, "No Finding"]}))
    run("localize", "--model", t / "xray-model", "--data", xray, "--boxes", xray / "BBox_List_2017.csv", "--out", t / "loc",
        "--draws", 2, "--show", 1)
    assert json.loads((t / "typ" / "manifest.json").read_text())["meta"]["torch_dtype"] == "bfloat16"


def test_the_placement_check_catches_a_model_loaded_outside_the_runtime(recorded_forwards):
    from diffmine.core.bundle import SDBundle
    from diffmine.core.models import resolve_model

    bundle = SDBundle.from_pretrained(resolve_model("tiny")).eval()  # what a command must not do
    z = torch.zeros(1, 4, 8, 8)
    bundle.unet(z, torch.tensor([10]), encoder_hidden_states=bundle.encode_prompts([""]))
    with pytest.raises(AssertionError, match="UNet ran as .*float32.*the runtime chose cpu / bfloat16"):
        _check(recorded_forwards, "a rogue command")


def test_the_recorder_sees_unet_and_vae_forwards_under_autocast(tiny_bundle):
    """One copy of the hook serves the tests and benchmarks/gpu_end_to_end.py: it sees the VAE too,
    and what autocast computes in (the finetuner's mixed precision)."""
    bundle = tiny_bundle.eval()
    stops = []
    with torch.no_grad(), record_forwards(before=stops.append) as seen:
        z = bundle.encode_images(torch.zeros(1, 3, 32, 32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bundle.unet(z, torch.tensor([10]), encoder_hidden_states=bundle.encode_prompts([""]))
    assert [f.part for f in seen] == ["vae.encoder", "unet"] and stops == seen
    assert [f.compute for f in seen] == [torch.float32, torch.bfloat16] and seen[1].weights is torch.float32
    assert misplaced(seen, "cpu", {"unet": torch.bfloat16, "vae": torch.float32}) == []
    assert misplaced(seen, "cpu", torch.float32) == [seen[1]]
    assert misplaced(seen, "cuda", torch.float32) == seen
    from diffusers import UNet2DConditionModel
    assert UNet2DConditionModel.forward.__name__ == "forward"  # restored after the block


def test_in_memory_maps_run_where_the_runtime_chose(recorded_forwards, tmp_path):
    """localize's compute_maps places a caller's bundle on the runtime first (not where it happened to be)."""
    import numpy as np

    from diffmine.apps.localize.run import compute_maps
    from diffmine.core.tiny import build_tiny_bundle

    images = np.zeros((1, 3, 32, 32), np.float32)
    store = compute_maps(build_tiny_bundle(resolution=32), images, ["a"], [["Mass"]], tmp_path / "maps", draws=2, progress=False)
    assert store.meta["dtype"] == "bfloat16"
    _check(recorded_forwards, "compute_maps")


def test_mining_stages_need_the_callers_runtime():
    from mining.stages import compute_features

    with pytest.raises(TypeError, match="needs the caller's Runtime"):
        compute_features(None, None, None, None, None, None)
