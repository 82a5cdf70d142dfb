"""Every command end to end on SD v1.5's architecture (random weights), each phase timed: one prepared
script for the next lent GPU.

    python benchmarks/gpu_end_to_end.py --out runs/gpu-e2e                      # on the GPU, defaults
    python benchmarks/gpu_end_to_end.py --device cpu --resolution 64 --images 4 --draws 2 --steps 2 \\
        --finetune-steps 1 --lora-rank 4 --compare-draws 10 --reference-draws 4 --no-compile --out runs/e2e-cpu

1. Set-up (not budgeted): the random-weight folder laid out like the hub's stable-diffusion-v1-5
   (benchmarks/sd15_layout.py's builder; reused when `--folder` holds a finished build), towns
   images at `--resolution` (diffmine.datasets.towns, `--images` in all, over its 4 labels), and
   synthetic radiographs with boxes (diffmine.datasets.radiographs) for localize.
2. The phases, in-process through the config dataclasses and run functions that diffmine/cli/*.py
   calls: finetune (`--finetune-steps`; bf16 mixed precision on a GPU, none on the CPU; it runs where
   accelerate puts it, as `diffmine finetune` has no --device), typicality
   (`--draws`, 64), mine (its DIFT pass), classify (every label of the data: the towns have 4),
   anomaly fit and score with the `features` and `patches` scores, translate (Plug-and-Play,
   `--steps` sampling + `--steps` inversion steps, 50 + 50), changes, localize (boxes of the
   radiographs, a model folder of the same weights with the chest X-ray prompts), and
   engine_vs_reference: the typicality engine at its default batching against the published loop
   (one image at a time, 10 draws per mini-batch: docs/method.md §2), both in fp16 (fp32 on a CPU),
   `--compare-draws` each, every map correlated with a `--reference-draws` map (256), eager and
   under torch.compile (cold compile seconds separate; `--no-compile` skips it).
3. `--budget-s` is split over the phases by weight (what a phase leaves unused goes to the later
   ones). Every UNet / VAE forward passes diffmine.core.placement's recorder, which stops the phase
   when its share is spent (status "out_of_budget"; the script moves on) and checks that the
   forward ran on `--device` in the runtime's dtype (`placement_ok`; the finetuner: UNet under
   autocast, VAE fp32). A phase whose input an earlier phase did not produce is "skipped".
4. As each phase ends: one JSON line printed and appended to OUT/phases.jsonl (`phase`, `status`,
   `seconds`, `budget_s`, `items`, `unit`, `items_per_s`, `peak_mem_gb` (null on a CPU),
   `placement_ok`, ...), so a killed run keeps what it measured; OUT/setup.json; at the end
   OUT/table.md (printed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # diffmine from this checkout; sd15_layout, typicality_common

# phase -> share of the budget (relative); the engine comparison compiles twice, finetune exports 3.4 GB
WEIGHTS = {"finetune": 3.0, "typicality": 2.0, "mine": 1.5, "classify": 1.5, "anomaly_fit_features": 0.75,
           "anomaly_score_features": 0.75, "anomaly_fit_patches": 0.75, "anomaly_score_patches": 0.75,
           "translate": 2.0, "changes": 2.0, "localize": 1.5, "engine_vs_reference": 6.0}
PHASES = tuple(WEIGHTS)
KEYS = ("phase", "status", "seconds", "budget_s", "items", "unit", "items_per_s", "peak_mem_gb", "placement_ok")


class OutOfBudget(Exception):
    """Raised ahead of a UNet / VAE forward once the phase's share of --budget-s is spent."""


def parse_args(argv=None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:1, cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="the commands' --dtype (auto: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--resolution", type=int, default=512, help="image size in px (a multiple of 64, 64-512)")
    p.add_argument("--images", type=int, default=32, help="towns images in all (over 4 labels); radiographs too")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for all phases together (not the set-up)")
    p.add_argument("--out", required=True, help="folder for phases.jsonl, table.md, setup.json and the work")
    p.add_argument("--folder", default=None, help="random-weight SD v1.5 folder (default: OUT/sd15-random; "
                                                  "reused when it holds a finished build)")
    p.add_argument("--draws", type=int, default=64, help="typicality draws per image (typicality, localize, "
                                                          "changes; classify and anomaly at most their defaults)")
    p.add_argument("--dift-draws", type=int, default=8, help="DIFT noise draws (mine, changes)")
    p.add_argument("--steps", type=int, default=50, help="translate: DDIM sampling steps and inversion steps each")
    p.add_argument("--finetune-steps", type=int, default=20, help="finetune steps")
    p.add_argument("--finetune-batch", type=int, default=8, help="finetune images per step")
    p.add_argument("--lora-rank", type=int, default=0, help="finetune LoRA adapters of this rank (0: the full UNet)")
    p.add_argument("--compare-images", type=int, default=4, help="engine_vs_reference: images compared")
    p.add_argument("--compare-draws", type=int, default=100, help="engine_vs_reference: draws of each contender "
                                                                    "(a multiple of 10, the published mini-batch)")
    p.add_argument("--reference-draws", type=int, default=256, help="engine_vs_reference: draws of the maps "
                                                                     "every map is correlated with")
    p.add_argument("--no-compile", action="store_true", help="engine_vs_reference: skip torch.compile (CPU)")
    p.add_argument("--only", default=None, help="comma-separated phases to run (default: all)")
    a = p.parse_args(argv)
    bad = None
    if a.resolution % 64 or not 64 <= a.resolution <= 512:
        bad = f"--resolution: must be a multiple of 64 in 64..512 (SD v1.5's UNet, the towns renderer), got {a.resolution}"
    elif a.images < 4:
        bad = f"--images: must be >= 4 (one per town), got {a.images}"
    elif a.budget_s <= 0:
        bad = f"--budget-s: must be > 0, got {a.budget_s}"
    elif a.compare_draws < 10 or a.compare_draws % 10:
        bad = f"--compare-draws: must be a positive multiple of 10 (the published mini-batch), got {a.compare_draws}"
    for name in ("draws", "dift_draws", "steps", "finetune_steps", "finetune_batch", "compare_images",
                 "reference_draws"):
        if bad is None and getattr(a, name) < 1:
            bad = f"--{name.replace('_', '-')}: must be >= 1, got {getattr(a, name)}"
    if bad is None and a.lora_rank < 0:
        bad = f"--lora-rank: must be >= 0, got {a.lora_rank}"
    if bad is None and a.only:
        unknown = sorted(set(a.only.split(",")) - set(PHASES))
        if unknown:
            bad = f"--only: unknown phase(s) {unknown}; phases: {', '.join(PHASES)}"
    if bad is None:
        try:
            dev = torch.device(a.device)
        except RuntimeError:
            bad = f"--device: not a device name: {a.device!r} (cpu, cuda, cuda:1)"
        else:
            if dev.type == "cuda" and not torch.cuda.is_available():
                bad = f"--device {a.device}: this machine has no CUDA GPU (torch {torch.__version__})"
    if bad:
        sys.exit(f"gpu_end_to_end.py: error: {bad}")
    return a


# -- set-up ----------------------------------------------------------------------------------------
def build_or_reuse(folder: Path) -> dict:
    from sd15_layout import BUILD_INFO, build_folder

    if (folder / BUILD_INFO).is_file():
        return {**json.loads((folder / BUILD_INFO).read_text()), "cached": True}
    folder.parent.mkdir(parents=True, exist_ok=True)
    return {**build_folder(folder), "cached": False}


def make_towns(work: Path, images: int, res: int) -> tuple[Path, Path, list[str], int]:
    """(data folder, normal folder: links to the images of the first half of the towns, labels, images)."""
    from diffmine.core.dataset import LabeledImages
    from diffmine.datasets.towns import TOWNS, generate_towns

    per_town = math.ceil(images / len(TOWNS))
    data = generate_towns(work / "towns", n_train=per_town, n_test=1, size=res, seed=0) / "train"
    records = LabeledImages(data).records
    labels = sorted({lab for r in records for lab in r.labels})
    normal = work / "normal"  # the anomaly detector's normal images: half the towns, scored with the rest
    shutil.rmtree(normal, ignore_errors=True)
    normal.mkdir(parents=True)
    for r in records:
        if r.labels[0] in labels[: len(labels) // 2]:
            (normal / r.path.name).symlink_to(r.path.resolve())
    return data, normal, labels, len(records)


def make_xray(work: Path, folder: Path, images: int, res: int) -> tuple[Path, Path]:
    """Radiographs with NIH-style boxes, and a model folder of the random weights that knows the
    findings (the chest X-ray prompts, diffmine_train.json labels) and says it works at `res` px.
    Links, not copies: only the UNet's config differs (its sample_size)."""
    from diffmine.core.prompts import PRESETS
    from diffmine.datasets.radiographs import FINDINGS, NO_FINDING, write_split

    xray = work / "xray"
    shutil.rmtree(xray, ignore_errors=True)
    write_split(xray, images, seed=1, size=res)
    model = work / "xray-model"
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir(parents=True)
    for part in ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler"):
        (model / part).symlink_to((folder / part).resolve())
    (model / "unet").mkdir()
    for f in (folder / "unet").iterdir():
        if f.name != "config.json":
            (model / "unet" / f.name).symlink_to(f.resolve())
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps({**cfg, "sample_size": res // 8}, indent=2))
    PRESETS["chest_xray"].save(model)
    (model / "diffmine_train.json").write_text(json.dumps({"labels": [*FINDINGS, NO_FINDING]}))
    return xray, model


def count_images(folder: Path) -> int:
    from diffmine.core.inputs import ImageInput

    return len(ImageInput(folder))  # what the anomaly commands see: every image under it


# -- the phase runner ------------------------------------------------------------------------------
class Runner:
    def __init__(self, out: Path, device: str, budget_s: float, phases: list[str]):
        import torch

        self.out, self.device, self.budget_s = out, torch.device(device), budget_s
        self.cuda = self.device.type == "cuda"
        self.pending = list(phases)
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.jsonl = out / "phases.jsonl"
        self.jsonl.write_text("")

    def share(self, phase: str) -> float:
        """This phase's part of what is left of the budget, by weight among the phases still to run."""
        left = max(0.0, self.budget_s - (time.perf_counter() - self.start))
        return left * WEIGHTS[phase] / sum(WEIGHTS[p] for p in self.pending)

    def skip(self, phase: str, why: str) -> None:
        self.pending.remove(phase)
        self._record({"phase": phase, "status": "skipped", "seconds": 0.0, "budget_s": 0.0, "items": None,
                      "unit": None, "items_per_s": None, "peak_mem_gb": None, "placement_ok": None, "note": why})

    def run(self, phase: str, fn, dtypes) -> dict:
        """fn(info: dict) does the phase, filling info (items, unit, extras; partial work stays)."""
        import torch

        from diffmine.core.placement import misplaced, record_forwards

        budget = self.share(phase)
        self.pending.remove(phase)
        print(f"[{phase}] budget {budget:.0f} s ...", flush=True)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        deadline = t0 + budget

        def before(_forward):
            if time.perf_counter() > deadline:
                raise OutOfBudget(phase)

        info: dict = {}
        status = "ok"
        with record_forwards(before=before) as seen:
            info.update(recording=seen, deadline=deadline, budget_s=budget)
            try:
                fn(info)
            except OutOfBudget:
                status = "out_of_budget"
            except Exception as exc:  # noqa: BLE001 - one broken phase must not cost the others' numbers
                traceback.print_exc()
                status, info["note"] = "error", f"{type(exc).__name__}: {exc}"[:300]
            if self.cuda:
                torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        for key in ("recording", "deadline", "budget_s"):
            info.pop(key)
        status = info.pop("status", status)  # a phase that stopped itself early (finetune's max_minutes)
        wrong = misplaced(seen, self.device.type, dtypes)
        checked = info.pop("checked_by_parameters", None)  # compiled forwards run unrecorded
        ok = (not wrong and (bool(seen) or checked is not None)) and checked in (None, True)
        items = info.pop("items", None)
        row = {"phase": phase, "status": status, "seconds": round(seconds, 2), "budget_s": round(budget, 1),
               "items": items, "unit": info.pop("unit", None),
               "items_per_s": round(items / seconds, 4) if status == "ok" and items else None,
               "peak_mem_gb": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2) if self.cuda else None,
               "placement_ok": ok if (seen or checked is not None) else None,
               "forwards": {part: sum(f.part == part for f in seen) for part in ("unet", "vae.encoder", "vae.decoder")},
               **info}
        if wrong:
            row["misplaced"] = sorted({f"{f.part} on {f.device} in {str(f.compute)[6:]}" for f in wrong})
        if status == "ok" and seconds > budget:
            row["over_budget_s"] = round(seconds - budget, 1)  # finished, but after its share
        self._record(row)
        return row

    def _record(self, row: dict) -> None:
        self.rows.append(row)
        line = json.dumps(row, default=str)
        with open(self.jsonl, "a") as f:
            f.write(line + "\n")
        print(line, flush=True)


def table(rows: list[dict], setup: dict) -> str:
    fmt = lambda v, nd=2: "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"End to end on SD v1.5's architecture (random weights): {setup['device_name']}, {setup['resolution']} px, "
             f"{setup['images']} images, budget {setup['budget_s']:.0f} s, torch {setup['torch']}.", "",
             "| phase | status | seconds | budget s | items | items/s | peak GPU GB | placement ok | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        unit = f" {r['unit']}" if r.get("unit") and r["items"] is not None else ""
        note = r.get("note", "")
        if r["phase"] == "engine_vs_reference" and r.get("contenders"):
            note = "; ".join(f"{k}: {v['images_per_s']:.3g} img/s, corr {v['corr']:.4f}"
                             for k, v in r["contenders"].items() if v.get("images_per_s"))
            if r.get("compile_cold_s"):
                note += "; cold compile " + ", ".join(f"{k} {v:.0f} s" for k, v in r["compile_cold_s"].items())
        if r.get("over_budget_s"):
            note = (note + "; " if note else "") + f"{r['over_budget_s']} s over its share"
        lines.append(f"| {r['phase']} | {r['status']} | {fmt(r['seconds'], 1)} | {fmt(r['budget_s'], 0)} | "
                     f"{fmt(r['items'])}{unit} | {fmt(r['items_per_s'], 3)} | {fmt(r['peak_mem_gb'])} | "
                     f"{fmt(r['placement_ok'])} | {note} |")
    return "\n".join(lines) + "\n"


# -- the phases ------------------------------------------------------------------------------------
def main(argv=None) -> None:
    a = parse_args(argv)
    import torch

    from diffmine.core.runtime import resolve_dtype

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    folder = Path(a.folder).resolve() if a.folder else out / "sd15-random"
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    res = a.resolution
    t0 = time.perf_counter()
    build = build_or_reuse(folder)
    data, normal, labels, n_images = make_towns(work, a.images, res)
    xray, xray_model = make_xray(work, folder, a.images, res)
    n_normal = count_images(normal)
    scored = data / "images"  # every image under the folder is scored: not the towns' masks/
    setup = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
             "torch": torch.__version__, "threads": torch.get_num_threads(), "resolution": res, "images": n_images,
             "labels": labels, "budget_s": a.budget_s, "folder": str(folder), "build": build,
             "setup_s": round(time.perf_counter() - t0, 1), "args": vars(a)}
    (out / "setup.json").write_text(json.dumps(setup, indent=2) + "\n")
    print(f"set-up {setup['setup_s']} s: {folder} ({'reused' if build['cached'] else 'built'}), "
          f"{n_images} towns images ({len(labels)} labels) and {count_images(xray)} radiographs at {res} px", flush=True)

    only = a.only.split(",") if a.only else list(PHASES)
    run = Runner(out, a.device, a.budget_s, [p for p in PHASES if p in only])
    rt_dtype = resolve_dtype(a.dtype, device)
    common = dict(device=a.device, dtype=a.dtype)
    model = work / "finetuned"
    paths = {name: work / name for name in ("typicality", "mine", "classify", "det-features", "det-patches",
                                            "translate", "changes", "localize")}

    def fresh(path: Path) -> str:  # a rerun must time the work, not a resumed store
        shutil.rmtree(path, ignore_errors=True)
        return str(path)

    def needs(phase: str, path: Path, what: str) -> bool:
        if phase not in run.pending:
            return False
        if not path.exists():
            run.skip(phase, f"needs {what} ({path.relative_to(out)}), which an earlier phase did not produce")
            return False
        return True

    # finetune: the runtime's device, fp32 master weights, UNet under autocast (--mixed-precision: --dtype's alias)
    def finetune(info):
        from finetune.config import TrainConfig
        from finetune.train import train

        mp = "bf16" if cuda else "no"
        cfg = TrainConfig(data=str(data), out=fresh(model), base=str(folder), resolution=res,
                          max_steps=a.finetune_steps, batch_size=a.finetune_batch, mixed_precision=mp,
                          lora_rank=a.lora_rank, samples_per_label=0, checkpoint_every=10**9, log_every=1,
                          max_minutes=max(1.0, 0.6 * info["budget_s"]) / 60)  # stop training in time to export
        info.update(unit="steps", mixed_precision=mp, batch=a.finetune_batch, lora_rank=a.lora_rank)
        train(cfg, progress=False)
        shutil.rmtree(model / "checkpoints", ignore_errors=True)  # the optimizer state: ~10 GB of disk
        done = json.loads((model / "diffmine_train.json").read_text()).get("steps")
        log = [json.loads(x) for x in (model / "train_log.jsonl").read_text().splitlines() if x.strip()]
        info["items"] = done
        if log and log[-1].get("elapsed_s"):
            info["train_loop_steps_per_s"] = round(log[-1]["step"] / log[-1]["elapsed_s"], 4)
        if done is not None and done < a.finetune_steps:
            info["status"], info["note"] = "out_of_budget", f"stopped at step {done} of {a.finetune_steps}"

    if "finetune" in run.pending:
        mp_dtype = torch.bfloat16 if cuda else torch.float32
        run.run("finetune", finetune, {"unet": mp_dtype, "vae": torch.float32})

    def typicality(info):
        from typicality.config import TypicalityConfig
        from typicality.engine import run_typicality

        run_typicality(TypicalityConfig(model=str(model), data=str(data), out=fresh(paths["typicality"]),
                                        draws=a.draws, **common), progress=False)
        info.update(items=n_images, unit="images", draws=a.draws)

    if needs("typicality", model / "diffmine_train.json", "the finetuned model"):
        run.run("typicality", typicality, rt_dtype)

    per_label = math.ceil(a.images / len(labels))
    clusters = max(2, min(32, per_label * 5 // 2))  # 5 patches per image; k-means needs more patches than clusters

    def mine(info):
        from mining.config import MineConfig
        from mining.mine import run_mining

        run_mining(MineConfig(model=str(model), data=str(data), typicality=str(paths["typicality"]),
                              out=fresh(paths["mine"]), clusters=clusters, min_members=1, min_images=1,
                              dift_draws=a.dift_draws, baselines=2, show=4, **common), progress=False)
        info.update(items=n_images, unit="images", clusters=clusters, dift_draws=a.dift_draws)

    if needs("mine", paths["typicality"] / "manifest.json", "the typicality store"):
        run.run("mine", mine, rt_dtype)

    def classify(info):
        from diffmine.apps.classify.config import ClassifyConfig
        from diffmine.apps.classify.run import run_classify

        draws, first = min(32, a.draws), min(8, a.draws)  # classify's defaults, or fewer with --draws
        res_ = run_classify(ClassifyConfig(model=str(model), data=str(data), out=fresh(paths["classify"]),
                                           draws=draws, first_draws=first, keep=min(3, len(labels)), **common),
                            progress=False)
        info.update(items=n_images, unit="images", labels=len(labels), draws=draws, first_draws=first,
                    accuracy=res_.get("accuracy") if res_ else None)

    if needs("classify", model / "diffmine_train.json", "the finetuned model"):
        run.run("classify", classify, rt_dtype)

    for score in ("features", "patches"):
        det = paths[f"det-{score}"]

        def fit(info, score=score, det=det):
            from diffmine.apps.anomaly.config import AnomalyFitConfig
            from diffmine.apps.anomaly.run import fit_detector

            fit_detector(AnomalyFitConfig(data=str(normal), out=fresh(det), model=str(model), score=score,
                                          draws=min(16, a.draws), n_neighbors=max(1, min(5, n_normal - 1)),
                                          patch_draws=min(2, a.draws), **common), progress=False)
            info.update(items=n_normal, unit="images")

        def score_(info, det=det):
            from diffmine.apps.anomaly.config import AnomalyScoreConfig
            from diffmine.apps.anomaly.run import score_images

            score_images(AnomalyScoreConfig(detector=str(det), data=str(scored), out=str(det / "scores.csv"), **common),
                         progress=False)
            info.update(items=count_images(scored), unit="images")

        if needs(f"anomaly_fit_{score}", model / "diffmine_train.json", "the finetuned model"):
            run.run(f"anomaly_fit_{score}", fit, rt_dtype)
        if needs(f"anomaly_score_{score}", det, "a fitted detector"):
            run.run(f"anomaly_score_{score}", score_, rt_dtype)

    n_translations = n_images * (len(labels) - 1)

    def translate(info):
        from diffmine.apps.translate.config import TranslateConfig
        from diffmine.apps.translate.run import run_translate

        run_translate(TranslateConfig(model=str(model), data=str(data), out=fresh(paths["translate"]), to="all",
                                      method="pnp", steps=a.steps, inversion_steps=a.steps, **common), progress=False)
        info.update(items=n_translations, unit="translations", steps=a.steps, inversion_steps=a.steps)

    if needs("translate", model / "diffmine_train.json", "the finetuned model"):
        run.run("translate", translate, rt_dtype)

    def changes(info):
        from diffmine.apps.changes.config import ChangesConfig
        from diffmine.apps.changes.run import run_changes

        run_changes(ChangesConfig(model=str(model), translations=str(paths["translate"]), out=fresh(paths["changes"]),
                                  draws=a.draws, dift_draws=a.dift_draws, clusters=clusters, min_members=1,
                                  min_images=1, show=4, **common), progress=False)
        info.update(items=n_translations, unit="translations", draws=a.draws)

    if needs("changes", paths["translate"] / "translations.csv", "the translations"):
        run.run("changes", changes, rt_dtype)

    def localize(info):
        from diffmine.apps.localize.config import LocalizeConfig
        from diffmine.apps.localize.run import run_localize

        run_localize(LocalizeConfig(model=str(xray_model), data=str(xray), boxes=str(xray / "BBox_List_2017.csv"),
                                    out=fresh(paths["localize"]), draws=a.draws, show=4, **common), progress=False)
        info.update(items=count_images(xray), unit="images", draws=a.draws)

    if "localize" in run.pending:
        run.run("localize", localize, rt_dtype)

    compare_dtype = torch.float16 if cuda else torch.float32  # the published loop's precision (CPU: fp32)
    if "engine_vs_reference" in run.pending:
        run.run("engine_vs_reference", lambda info: engine_vs_reference(info, a, folder, data, device,
                                                                         compare_dtype), compare_dtype)

    md = table(run.rows, setup)
    (out / "table.md").write_text(md)
    print("\n" + md, flush=True)


def engine_vs_reference(info: dict, a, folder: Path, data: Path, device, dtype) -> None:
    """The engine (default batching) against the published loop at equal draws, each map correlated with
    a many-draw map; eager, then compiled. Results land in `info` as they come (a budget stop keeps them)."""
    import torch

    import typicality_common as tc
    from diffmine.core.bundle import SDBundle
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.prompts import PromptTemplate

    bundle = SDBundle.from_pretrained(folder).eval().to(device, dtype)
    prompts = PromptTemplate()
    ds = LabeledImages(str(data))
    records = ds.records[:: max(1, len(ds) // a.compare_images)][: a.compare_images]  # spread over the labels
    records, arrays = ds.load_arrays(a.resolution, records)
    ids, images, labels = [r.image_id for r in records], torch.from_numpy(arrays), [r.labels for r in records]
    n = a.compare_draws
    contenders = info.setdefault("contenders", {})
    info.update(items=len(ids), unit="images", dtype=str(dtype)[6:], draws=n, reference_draws=a.reference_draws)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn):
        sync()
        t = time.perf_counter()
        maps = fn()
        sync()
        return maps, time.perf_counter() - t

    runs = {"reference": lambda: tc.reference_maps(bundle, prompts, ids, images, labels, n=n)[0],
            "engine": lambda: tc.engine_maps(bundle, prompts, ids, images, labels, draws=n)[0]}
    tc.reference_maps(bundle, prompts, ids[:1], images[:1], labels[:1], n=tc.REFERENCE_MINIBATCH)  # warm-up
    tc.engine_maps(bundle, prompts, ids[:1], images[:1], labels[:1], draws=8)
    maps = {}
    for name, fn in runs.items():
        maps[name], s = timed(fn)
        contenders[name] = {"images_per_s": round(len(ids) / s, 4), "seconds": round(s, 2)}
    truth = tc.precise_maps(bundle, prompts, ids, images, labels, draws=a.reference_draws)

    def correlate():
        for name, m in maps.items():
            per_image = tc.correlations(m, truth)
            contenders[name].update(corr=round(float(per_image.mean()), 4),
                                    corr_per_image=[round(float(c), 4) for c in per_image])
    correlate()
    info["engine_speedup"] = round(contenders["engine"]["images_per_s"] / contenders["reference"]["images_per_s"], 3)
    if a.no_compile:
        info["compile"] = "skipped (--no-compile)"
        return
    # compiled: the recorder is paused (dynamo would trace it); placement is checked on the weights instead
    unet = bundle.unet
    p = next(unet.parameters())
    info["checked_by_parameters"] = p.device.type == device.type and p.dtype == dtype
    bundle.unet = torch.compile(unet)
    info["compile_cold_s"] = {}
    try:
        for name, fn in (("engine", runs["engine"]), ("reference", runs["reference"])):
            if time.perf_counter() > info["deadline"]:
                raise OutOfBudget(name)
            with info["recording"].paused():
                _, cold = timed(fn)  # the first pass compiles (and recompiles for its last, smaller batch)
                if time.perf_counter() > info["deadline"]:
                    info["compile_cold_s"][name] = round(cold, 1)  # an upper bound: no warm pass to subtract
                    raise OutOfBudget(name)
                maps[f"{name}_compiled"], s = timed(fn)
            info["compile_cold_s"][name] = round(max(0.0, cold - s), 1)
            contenders[f"{name}_compiled"] = {"images_per_s": round(len(ids) / s, 4), "seconds": round(s, 2)}
            correlate()
    finally:
        bundle.unet = unet
    if "engine_compiled" in contenders and "reference_compiled" in contenders:
        info["compiled_engine_speedup"] = round(contenders["engine_compiled"]["images_per_s"]
                                                / contenders["reference_compiled"]["images_per_s"], 3)


if __name__ == "__main__":
    main()
