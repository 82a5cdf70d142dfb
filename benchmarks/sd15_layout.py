"""Every command end to end on a random-weight folder laid out like the hub's SD v1.5, at 128 px.

    python benchmarks/sd15_layout.py [--folder runs/sd15-random] [--only typicality,mine] [--lora-rank 0]

1. build (once; reused when `--folder` already holds a finished build) a diffusers folder laid out
   like `stable-diffusion-v1-5/stable-diffusion-v1-5`: `model_index.json`, `unet/`, `vae/`,
   `text_encoder/`, `tokenizer/`, `scheduler/`, each config written here as data with the
   published values (SD v1.5 UNet2DConditionModel, the f8 AutoencoderKL, the ViT-L/14 CLIP text
   tower with the hub's bos/eos/pad ids 0/2/1, the hub's PNDMScheduler config). The models are made
   from these configs with the diffusers/transformers classes (`from_config`) after
   `torch.manual_seed(0)`, their parameter counts asserted (UNet 859.52 M, VAE 83.65 M, text
   encoder 123.06 M), and saved as fp32 safetensors (the hub's default, non-variant files; 3.4 GB
   UNet): diffmine loads fp32 on the CPU, so fp16 files would only save disk.
   The tokenizer is the real CLIP BPE vocabulary the project ships (diffmine.core.clip_vocab), written
   the way the shipped small model writes its tokenizer (diffmine.core.tiny.tiny_tokenizer).
2. 128 px. The folder keeps every published config value, `unet.sample_size` 64 (512 px)
   included. The one place 128 px enters is `diffmine finetune --resolution 128`, the project's own
   flag: the finetuner trains at 128 px and its exported folder says so (it registers
   `sample_size` 16 in the finetuned UNet's config, as it does for any --resolution). Every later
   command runs on that finetuned folder and so at 128 px: typicality and anomaly fit are also given
   `--resolution 128` (they have the flag), mine reads the store's resolution, translate, classify
   and localize read the model's (`SDBundle.resolution`), changes reads the translations'. No second
   folder with edited configs is needed.
   Deviations from the hub layout, all in model_index.json / missing folders: `safety_checker` and
   `feature_extractor` are `[null, null]` (`requires_safety_checker` false), as
   `StableDiffusionPipeline.save_pretrained` writes them without a checker: `SDBundle.from_pretrained`
   reads neither, and a random 1.2 GB CLIP vision tower would only cost disk. `prediction_type`
   "epsilon" is written into the scheduler config (the PNDM default, which the v1.5 file leaves out)
   and `scaling_factor` 0.18215 into the VAE config (the AutoencoderKL default, likewise).
3. data: 2 labels x 3 synthetic radiographs at 128 px (diffmine.datasets.radiographs: "No Finding"
   and "Nodule", with the Nodule boxes in NIH BBox_List_2017.csv layout), one data set for every
   command, so one finetune serves all (localize needs a model that knows the boxed finding).
   Then each command through the CLI (a subprocess, OMP_NUM_THREADS=2, HF_HUB_OFFLINE=1) with the
   smallest settings that exercise it: finetune (1 step, batch 1), typicality, mine, translate,
   changes, classify, anomaly fit, anomaly score, localize. For each: exit status, wall time, peak
   RSS, whether the main output file exists; logs in WORK/logs/. A table, a run entry appended to
   benchmarks/results/sd15_layout.json (earlier entries kept), and one JSON line last.
   `--only` runs a subset; a command whose input (an earlier command's output) is missing is skipped.
   Also timed: one UNet forward at 128 px (16 x 16 latents) on this CPU, batch 1 and batch 2.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sd15_layout.json"
RES = 128
LABELS = ("No Finding", "Nodule")
PER_LABEL = 3
EXPECTED_M = {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06}  # millions, SD v1.5 as published

# -- the published configs (stable-diffusion-v1-5/stable-diffusion-v1-5), as data ----------------
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": [None, None],  # hub: ["transformers", "CLIPImageProcessor"] (see docstring)
    "safety_checker": [None, None],     # hub: ["stable_diffusion", "StableDiffusionSafetyChecker"]
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_ENCODER = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
BUILD_INFO = "sd15_layout_build.json"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_tokenizer(folder: Path) -> None:
    """The CLIP tokenizer as the shipped small model writes it (transformers' tokenizer.json and
    tokenizer_config.json), plus the hub's vocab.json and merges.txt (the same vocabulary)."""
    from diffmine.core.clip_vocab import write_clip_vocab
    from diffmine.core.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(str(folder))
    write_clip_vocab(folder)


def _n_params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


# -- 1. the folder -------------------------------------------------------------------------------
def build_folder(folder: Path, seed: int = 0) -> dict:
    """Write the folder (into a temporary sibling, renamed at the end); returns the build info."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.time()
    _write(tmp / "model_index.json", MODEL_INDEX)
    _write(tmp / "scheduler" / "scheduler_config.json", SCHEDULER)
    for name, cfg in (("unet", UNET), ("vae", VAE)):
        _write(tmp / name / "config.json", cfg)
    _write(tmp / "text_encoder" / "config.json", TEXT_ENCODER)
    write_tokenizer(tmp / "tokenizer")

    torch.manual_seed(seed)
    counts = {}
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(tmp / "text_encoder")))
    counts["text_encoder"] = _n_params_m(text_encoder)
    text_encoder.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
    del text_encoder
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(tmp / "vae")))
    counts["vae"] = _n_params_m(vae)
    vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
    del vae
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(tmp / "unet")))
    counts["unet"] = _n_params_m(unet)
    unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
    del unet
    # save_pretrained rewrites the configs with today's library defaults added; the published values
    # must still be there unchanged (the docstring's claim)
    for name, cfg in (("unet", UNET), ("vae", VAE), ("text_encoder", TEXT_ENCODER)):
        saved = json.loads((tmp / name / "config.json").read_text())
        changed = {k: (v, saved.get(k)) for k, v in cfg.items() if not k.startswith("_") and k not in
                   ("architectures", "torch_dtype", "dtype") and saved.get(k) != v}
        assert not changed, f"{name}/config.json lost published values: {changed}"
    for name, m in EXPECTED_M.items():
        assert abs(counts[name] - m) < 0.05, f"{name}: {counts[name]} M parameters, expected {m} M"
    info = {"params_m": counts, "seed": seed, "dtype": "float32", "build_s": round(time.time() - start, 1),
            "bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())}
    _write(tmp / BUILD_INFO, info)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return info


def check_loads(folder: Path) -> dict:
    """The folder loads the way diffmine loads it; one UNet forward at 128 px timed (batch 1, 2)."""
    import torch

    from diffmine.core.bundle import SDBundle

    t0 = time.time()
    bundle = SDBundle.from_pretrained(folder).eval()
    load_s = time.time() - t0
    assert bundle.resolution == 512 and bundle.vae_scale_factor == 8, (bundle.resolution, bundle.vae_scale_factor)
    assert bundle.unet.dtype == torch.float32
    assert type(bundle.scheduler).__name__ == "DDPMScheduler"  # diffmine reads the PNDM file's betas as DDPM
    emb = bundle.encode_prompts(["Nodule", ""])
    assert emb.shape == (2, 77, 768), emb.shape
    lat = RES // bundle.vae_scale_factor
    times = {}
    with torch.no_grad():
        for b in (1, 2):
            x, t = torch.randn(b, 4, lat, lat), torch.full((b,), 500)
            bundle.unet(x, t, encoder_hidden_states=emb[:b])  # warm-up
            runs = []
            for _ in range(2):
                s = time.time()
                out = bundle.unet(x, t, encoder_hidden_states=emb[:b]).sample
                runs.append(time.time() - s)
            assert out.shape == x.shape and torch.isfinite(out).all()
            times[f"unet_forward_128px_b{b}_s"] = round(min(runs), 3)
    return {"load_s": round(load_s, 1), "torch_threads": torch.get_num_threads(), **times}


# -- 3. the data -----------------------------------------------------------------------------------
def make_data(root: Path, seed: int = 3) -> tuple[Path, Path]:
    """root/data: 3 'No Finding' + 3 'Nodule' radiographs at 128 px, metadata.csv, BBox_List_2017.csv;
    root/normal: the 'No Finding' ones alone (anomaly fit). Deterministic; rewritten each run."""
    import numpy as np
    from PIL import Image

    from diffmine.datasets.radiographs import NIH_HEADER, NO_FINDING, radiograph

    data, normal = root / "data", root / "normal"
    for d in (data, normal):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    meta, boxes = [], []
    for label in LABELS:
        findings = () if label == NO_FINDING else (label,)
        for i in range(PER_LABEL):
            img, bx = radiograph(rng, findings, RES)
            name = f"{label.replace(' ', '_').lower()}_{i}.png"
            pic = Image.fromarray(np.round(img * 255).astype(np.uint8), "L")
            pic.save(data / name)
            if not findings:
                pic.save(normal / name)
            meta.append([name, label])
            boxes += [[name, f, *bx[f]] for f in findings]
    with open(data / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label"])
        w.writerows(meta)
    with open(data / "BBox_List_2017.csv", "w", newline="") as f:
        f.write(NIH_HEADER + "\n")
        csv.writer(f).writerows(boxes)
    return data, normal


# -- the commands ----------------------------------------------------------------------------------
def commands(base: Path, work: Path, data: Path, normal: Path, lora_rank: int) -> list[dict]:
    """name, argv after `diffmine`, the output that shows it worked, the outputs of others it needs."""
    m = work / "finetuned"
    small_clusters = ["--clusters", "2", "--min-members", "1", "--min-images", "1", "--dift-draws", "1", "--show", "2"]
    return [
        dict(name="finetune", clean=[m], needs=[], out=m / "diffmine_train.json",
             argv=["finetune", "--data", data, "--out", m, "--base", base, "--resolution", RES, "--max-steps", 1,
                   "--batch-size", 1, "--samples-per-label", 0, "--checkpoint-every", 1000, "--log-every", 1,
                   "--lora-rank", lora_rank]),
        dict(name="typicality", clean=[work / "typicality"], needs=[m / "diffmine_train.json"], out=work / "typicality" / "manifest.json",
             argv=["typicality", "--model", m, "--data", data, "--out", work / "typicality", "--draws", 2,
                   "--resolution", RES, "--batch-size", 8, "--device", "cpu"]),
        dict(name="mine", clean=[work / "mine"], needs=[work / "typicality" / "manifest.json"], out=work / "mine" / "report.html",
             argv=["mine", "--model", m, "--data", data, "--typicality", work / "typicality", "--out", work / "mine",
                   "--per-image", 2, "--per-label", 6, "--baselines", 2, "--batch-size", 2, *small_clusters]),
        dict(name="translate", clean=[work / "translate"], needs=[m / "diffmine_train.json"], out=work / "translate" / "translations.csv",
             argv=["translate", "--model", m, "--data", data, "--out", work / "translate", "--to", "all",
                   "--steps", 2, "--inversion-steps", 2, "--batch-size", 2, "--device", "cpu"]),
        dict(name="changes", clean=[work / "changes"], needs=[work / "translate" / "translations.csv"], out=work / "changes" / "report.html",
             argv=["changes", "--model", m, "--translations", work / "translate", "--out", work / "changes",
                   "--per-image", 2, "--top", 12, "--draws", 2, "--batch-size", 8, *small_clusters]),
        dict(name="classify", clean=[work / "classify"], needs=[m / "diffmine_train.json"], out=work / "classify" / "predictions.csv",
             argv=["classify", "--model", m, "--data", data, "--out", work / "classify", "--draws", 2,
                   "--first-draws", 2, "--keep", 2, "--batch-size", 8, "--audit-top", 2]),
        dict(name="anomaly fit", clean=[work / "anomaly"], needs=[m / "diffmine_train.json"], out=work / "anomaly",
             argv=["anomaly", "fit", "--data", normal, "--out", work / "anomaly", "--model", m,
                   "--normal-label", LABELS[0], "--draws", 2, "--resolution", RES, "--batch-size", 8]),
        dict(name="anomaly score", clean=[work / "anomaly_scores.csv", work / "anomaly_maps"], needs=[work / "anomaly"], out=work / "anomaly_scores.csv",
             argv=["anomaly", "score", "--detector", work / "anomaly", "--data", data,
                   "--out", work / "anomaly_scores.csv", "--maps", work / "anomaly_maps"]),
        dict(name="localize", clean=[work / "localize"], needs=[m / "diffmine_train.json"], out=work / "localize" / "metrics.json",
             argv=["localize", "--model", m, "--data", data, "--boxes", data / "BBox_List_2017.csv",
                   "--out", work / "localize", "--draws", 2, "--batch-size", 8, "--show", 2]),
    ]


def _exists(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("diffmine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "diffmine"]


def _error_lines(text: str, n: int = 4) -> list[str]:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith(("|", "%"))]
    lines = [l for l in lines if "it/s]" not in l and "s/it]" not in l]
    return lines[-n:]


def run_command(cmd: dict, logs: Path) -> dict:
    argv = _cli() + [str(a) for a in cmd["argv"]]
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    log = logs / (cmd["name"].replace(" ", "_") + ".log")
    for path in cmd["clean"]:  # a stale output must not pass for this run's
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    start = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    rc = os.waitstatus_to_exitcode(status)
    ok = rc == 0 and _exists(cmd["out"])
    row = {"command": cmd["name"], "rc": rc, "wall_s": round(wall, 1), "max_rss_gb": round(usage.ru_maxrss / 2**20, 2),
           "output": os.path.relpath(cmd["out"], ROOT), "output_exists": _exists(cmd["out"]), "ok": ok,
           "log": os.path.relpath(log, ROOT), "argv": argv[len(_cli()):]}
    if not ok:
        row["error"] = _error_lines(log.read_text(errors="replace"))
    return row


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _append_result(entry: dict) -> None:
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    old["runs"].append(entry)
    _write(RESULTS, old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", default="runs/sd15-random", help="the random-weight SD v1.5 folder (built once)")
    ap.add_argument("--work", default=None, help="data and command outputs (default: FOLDER-work)")
    ap.add_argument("--only", default=None, help="comma-separated commands (e.g. typicality,mine; 'anomaly fit' "
                                                 "as anomaly-fit); 'none' = build and time only")
    ap.add_argument("--rebuild", action="store_true", help="build the folder again even when it is there")
    ap.add_argument("--lora-rank", type=int, default=0, help="finetune LoRA adapters (0: full UNet, ~15 GB RAM)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep finetune's optimizer checkpoint (~10 GB)")
    ap.add_argument("--no-record", action="store_true", help="do not append to " + os.path.relpath(RESULTS, ROOT))
    a = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    folder = (ROOT / a.folder).resolve() if not Path(a.folder).is_absolute() else Path(a.folder)
    work = Path(a.work).resolve() if a.work else folder.with_name(folder.name + "-work")
    names = [c["name"] for c in commands(folder, work, work, work, 0)]
    only = None
    if a.only:
        only = [] if a.only == "none" else [s.strip().replace("-", " ") for s in a.only.split(",") if s.strip()]
        unknown = sorted(set(only) - set(names))
        if unknown:
            sys.exit(f"--only: unknown command(s) {unknown}; known: {names}")

    if a.rebuild or not (folder / BUILD_INFO).is_file():
        print(f"building {folder} (random weights, published configs, fp32 safetensors) ...", flush=True)
        build = {**build_folder(folder), "cached": False}
    else:
        build = {**json.loads((folder / BUILD_INFO).read_text()), "cached": True}
        if not (folder / "tokenizer" / "vocab.json").is_file():  # builds before the hub's vocab files were added
            write_tokenizer(folder / "tokenizer")
    print(f"folder: {folder} ({build['bytes'] / 2**30:.2f} GiB, {'reused' if build['cached'] else 'built in %s s' % build['build_s']}); "
          f"parameters (M): {build['params_m']}", flush=True)
    timing = check_loads(folder)
    print(f"loads as SDBundle in {timing['load_s']} s; UNet forward at {RES} px on {timing['torch_threads']} threads: "
          f"batch 1 {timing['unet_forward_128px_b1_s']} s, batch 2 {timing['unet_forward_128px_b2_s']} s", flush=True)

    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    data, normal = make_data(work)
    rows = []
    for cmd in commands(folder, work, data, normal, a.lora_rank):
        if only is not None and cmd["name"] not in only:
            continue
        missing = [p for p in cmd["needs"] if not _exists(p)]
        if missing:
            rows.append({"command": cmd["name"], "rc": None, "wall_s": None, "ok": False, "skipped": True,
                         "error": [f"needs {os.path.relpath(p, ROOT)} (run its command first)" for p in missing]})
            print(f"[{cmd['name']}] skipped: missing {[str(p) for p in missing]}", flush=True)
            continue
        print(f"[{cmd['name']}] running ...", flush=True)
        row = run_command(cmd, logs)
        if cmd["name"] == "finetune" and not a.keep_checkpoints:
            shutil.rmtree(work / "finetuned" / "checkpoints", ignore_errors=True)
        rows.append(row)
        print(f"[{cmd['name']}] rc {row['rc']}, {row['wall_s']} s, peak RSS {row['max_rss_gb']} GiB, "
              f"output {'present' if row['output_exists'] else 'MISSING'}", flush=True)
        for line in row.get("error", []):
            print("    " + line, flush=True)

    print()
    print(f"{'command':<15}{'rc':>5}{'wall s':>9}{'RSS GiB':>9}  output")
    for r in rows:
        rc = "-" if r["rc"] is None else r["rc"]
        wall = "-" if r["wall_s"] is None else r["wall_s"]
        state = "skipped" if r.get("skipped") else ("ok" if r["ok"] else "FAILED")
        print(f"{r['command']:<15}{rc!s:>5}{wall!s:>9}{r.get('max_rss_gb', '-')!s:>9}  {state}: {r.get('output', '')}")

    entry = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
             "folder": str(folder), "resolution": RES, "data": f"{len(LABELS)} labels x {PER_LABEL} radiographs",
             "lora_rank": a.lora_rank, "torch": torch.__version__, "cpu_count": os.cpu_count(),
             "build": build, "timing": timing, "commands": rows}
    if not a.no_record:
        _append_result(entry)
    ran = [r for r in rows if not r.get("skipped")]
    summary = {"commands_ok": sum(r["ok"] for r in rows), "commands": len(rows),
               "failed": [r["command"] for r in ran if not r["ok"]],
               "skipped": [r["command"] for r in rows if r.get("skipped")],
               "unet_params_m": build["params_m"]["unet"], "vae_params_m": build["params_m"]["vae"],
               "text_encoder_params_m": build["params_m"]["text_encoder"], "resolution": RES,
               "unet_forward_128px_b1_s": timing["unet_forward_128px_b1_s"],
               "unet_forward_128px_b2_s": timing["unet_forward_128px_b2_s"],
               "wall_s": {r["command"]: r["wall_s"] for r in ran}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
