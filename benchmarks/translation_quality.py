"""Label-to-label translation on the towns held-out split, Plug-and-Play vs SDEdit.

Every held-out image of a subset (the first N per town, `--per-label`, default 10: 40 images,
120 translations per method) is translated to every other town with the shipped model
`assets/tiny-towns-model` by `run_translate` (defaults: 50 steps, CFG 7.5; PnP inverts with
50 steps and injects the layers and shares of diffmine/apps/translate/layers.json (for this tiny layout the residual for
70 %, queries and keys for 50 % of the steps); SDEdit strength 0.6, and 0.4-0.8 for its trade-off curve). Then, with the
typicality engine (64 stratified antithetic draws, t in [0.6T, 0.9T), the demo's range for
this model: diffmine/apps/demo/demo.json), for each translation x_{A->B} of an image x of town A:

  typicality gain   mean over pixels of T(x_{A->B} | B) - T(x | B)      (> 0: it became more B-like)
  elements fell     share of the pixels of A's characteristic elements (ground-truth masks) where
                    T(x_{A->B} | A) < T(x | A)                           (A's elements were changed)
  PSNR outside      PSNR of x_{A->B} against x on the pixels outside A's characteristic elements
                    (RGB in [0, 1]; mean over translations)             (the rest was kept)
  images/s          translations per second of wall time, inversion included (this machine)

The VAE's own reconstruction is shown as the ceiling of "PSNR outside". Target: both gains > 0
and PnP's PSNR outside above SDEdit's at an equal or larger gain. Last line, one JSON object:
{"pnp_typicality_gain", "pnp_psnr_outside", "sdedit_typicality_gain", "sdedit_psnr_outside", "pnp_images_per_s"}
(SDEdit at its default strength), plus "sdedit_psnr_at_pnp_gain": the PSNR SDEdit keeps on its strength
curve at PnP's gain (null when PnP's gain is outside the strengths run).

    python benchmarks/translation_quality.py [--per-label 10] [--draws 64] [--work runs/bench-translation]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


# SDEdit's trade-off between change and preservation is its strength: the default 0.6 is the one
# the JSON line reports; the others show whether PnP is above SDEdit's curve at an equal gain.
STRENGTHS = (0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_STRENGTH = 0.6


def subset(split: Path, out: Path, per_label: int) -> Path:
    """The first `per_label` images of each town of a split, as a data folder (links to the files)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("images", "masks"):
        os.symlink((split / name).resolve(), out / name)
    rows = [json.loads(line) for line in (split / "metadata.jsonl").read_text().splitlines() if line.strip()]
    keep = [r for r in rows if int(Path(r["file_name"]).stem.rsplit("_", 1)[1]) < per_label]
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR of uint8 RGB images on the pixels of `mask`, values in [0, 1]."""
    d = (a.astype(np.float64) - b.astype(np.float64))[mask] / 255.0
    return float(10 * np.log10(1.0 / max(float((d ** 2).mean()), 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "tiny-towns-model"))
    ap.add_argument("--per-label", type=int, default=10)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--work", default="runs/bench-translation")
    ap.add_argument("--split", choices=("test", "train"), default="test",
                    help="test: the held-out figures; train: for choosing settings (e.g. the tiny model's layers)")
    ap.add_argument("--layers", default=None, help="PnP layer mapping file (default: diffmine/apps/translate/layers.json)")
    ap.add_argument("--inversion-steps", type=int, default=None, help="PnP DDIM inversion steps (default: the "
                    "translate default)")
    ap.add_argument("--residual-injection", type=float, default=None, help="PnP residual injection share (default: "
                    "the translate default)")
    ap.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS),
                    help=f"SDEdit strengths (the JSON line reports {DEFAULT_STRENGTH}; must be among them)")
    args = ap.parse_args()
    if DEFAULT_STRENGTH not in args.strengths:
        ap.error(f"--strengths must include the default {DEFAULT_STRENGTH}")

    from PIL import Image

    from diffmine.evaluation.groundtruth import record_elements
    from diffmine.core.bundle import SDBundle
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.prompts import PromptTemplate
    from diffmine.apps.demo.run import demo_settings, towns_data
    from diffmine.apps.translate.config import TranslateConfig
    from diffmine.apps.translate.run import run_translate
    from typicality.engine import TypicalityEstimator
    from typicality.formula import upsample

    start = time.perf_counter()
    t_range = tuple(demo_settings()["typicality"]["t_range"])
    work = Path(args.work)
    # image i of a split does not depend on the split sizes: the first per_label train images are fixed
    split = towns_data(work / "towns", n_train=args.per_label) / args.split
    data = subset(split, work / "data", args.per_label)
    ds = LabeledImages(data)
    res = 64
    recs, arrays = ds.load_arrays(res)
    src_u8 = {r.image_id: np.round((a.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
              for r, a in zip(recs, arrays)}
    labels = ds.labels
    print(f"{len(recs)} {args.split} images ({args.per_label} per town), {len(recs) * (len(labels) - 1)} translations "
          f"per method; typicality {args.draws} draws, t in {t_range}")

    outs, speed = {}, {}
    pnp = {"method": "pnp", "layers": args.layers}
    if args.inversion_steps:
        pnp["inversion_steps"] = args.inversion_steps
    if args.residual_injection is not None:
        pnp["residual_injection"] = args.residual_injection
    runs = {"pnp": pnp,
            **{f"sdedit@{s:g}": {"method": "sdedit", "strength": s} for s in args.strengths}}
    for method, settings in runs.items():
        out = work / method
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        run_translate(TranslateConfig(model=args.model, data=str(data), out=str(out), to="all", **settings,
                                      batch_size=12, process_index=0, num_processes=1), progress=False)
        wall = time.perf_counter() - t0
        n = len(recs) * (len(labels) - 1)
        speed[method] = n / wall
        outs[method] = out
        print(f"  {method}: {n} translations in {wall:.1f} s ({speed[method]:.2f} images/s)")

    bundle = SDBundle.from_pretrained(args.model).eval()
    prompts = PromptTemplate.load(args.model)
    est = TypicalityEstimator(bundle, prompts, draws=args.draws, t_range=t_range, seed=0, batch_size=256)
    t0 = time.perf_counter()
    # sources under every label; each translation under its source and its target
    src_maps = {r.image_id: upsample(torch.from_numpy(m.diff), (res, res)).numpy()
                for r, m in zip(recs, est.estimate(arrays, [r.image_id for r in recs], [[(lab,) for lab in labels]] * len(recs)))}
    from diffmine.apps.translate.outputs import translation_file
    tr_ids, tr_imgs, tr_conds, tr_u8 = [], [], [], {}
    for method in outs:
        for r in recs:
            for b in labels:
                if b == r.labels[0]:
                    continue
                u8 = np.asarray(Image.open(outs[method] / translation_file(r.image_id, b)).convert("RGB"))
                key = f"{method}\x00{r.image_id}\x00{b}"
                tr_ids.append(key)
                tr_imgs.append(u8.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
                tr_conds.append([(r.labels[0],), (b,)])
                tr_u8[key] = u8
    tr_maps = {}
    for s in range(0, len(tr_ids), 64):
        for res_ in est.estimate(np.stack(tr_imgs[s:s + 64]), tr_ids[s:s + 64], tr_conds[s:s + 64]):
            tr_maps[res_.image_id] = upsample(torch.from_numpy(res_.diff), (res, res)).numpy()
    print(f"  typicality of {len(recs)} sources x {len(labels)} labels and {len(tr_ids)} translations x 2: "
          f"{time.perf_counter() - t0:.1f} s")

    # VAE reconstruction: the ceiling of what any translation can keep
    with torch.no_grad():
        vae = bundle.decode_latents(bundle.encode_images(torch.from_numpy(arrays))).numpy()
    vae_u8 = {r.image_id: np.round((v.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
              for r, v in zip(recs, vae)}
    col = {lab: j for j, lab in enumerate(labels)}
    elements = {r.image_id: record_elements(r, res, ds.root) for r in recs}
    results = {}
    for method in outs:
        gains, psnrs, fell, total = [], [], 0, 0
        for r in recs:
            a = r.labels[0]
            mask = elements[r.image_id].union(elements[r.image_id].characteristic(a))
            for b in labels:
                if b == a:
                    continue
                key = f"{method}\x00{r.image_id}\x00{b}"
                t_a, t_b = tr_maps[key]  # conditions (A, B)
                gains.append(float(t_b.mean() - src_maps[r.image_id][col[b]].mean()))
                fell += int((t_a[mask] < src_maps[r.image_id][col[a]][mask]).sum())
                total += int(mask.sum())
                psnrs.append(psnr(tr_u8[key], src_u8[r.image_id], ~mask))
        results[method] = {"gain": float(np.mean(gains)), "gain_positive": float(np.mean(np.array(gains) > 0)),
                           "fell": fell / max(total, 1), "psnr": float(np.mean(psnrs)), "speed": speed[method]}
    vae_psnr = float(np.mean([psnr(vae_u8[r.image_id], src_u8[r.image_id],
                                   ~elements[r.image_id].union(elements[r.image_id].characteristic(r.labels[0])))
                              for r in recs]))

    print()
    print("| method | typicality gain T(x_AB|B)-T(x|B) | share of gains > 0 | A's element pixels where T(.|A) fell "
          "| PSNR outside A's elements (dB) | images/s |")
    print("|---|---|---|---|---|---|")
    for m, v in results.items():
        print(f"| {m} | {v['gain']:+.5f} | {v['gain_positive']:.3f} | {v['fell']:.3f} | {v['psnr']:.2f} "
              f"| {v['speed']:.2f} |")
    print(f"| VAE reconstruction (ceiling) | | | | {vae_psnr:.2f} | |")
    p, s = results["pnp"], results[f"sdedit@{DEFAULT_STRENGTH:g}"]
    met = p["gain"] > 0 and s["gain"] > 0 and p["psnr"] > s["psnr"] and p["gain"] >= s["gain"]
    print(f"\ntarget at the defaults (SDEdit strength {DEFAULT_STRENGTH}): both gains > 0 and PnP's PSNR outside > "
          f"SDEdit's at an equal or larger gain: {'met' if met else 'NOT met'}"
          + ("" if met else f" (gains {p['gain']:+.5f} vs {s['gain']:+.5f}, PSNR {p['psnr']:.2f} vs {s['psnr']:.2f})"))
    # on SDEdit's strength curve: the PSNR SDEdit keeps at PnP's gain (linear between the two nearest strengths)
    curve = sorted((v["gain"], v["psnr"]) for k, v in results.items() if k.startswith("sdedit"))
    g, q = np.array([c[0] for c in curve]), np.array([c[1] for c in curve])
    at = None
    if g[0] <= p["gain"] <= g[-1]:
        at = float(np.interp(p["gain"], g, q))
        print(f"on SDEdit's strength curve, at PnP's gain {p['gain']:+.5f} SDEdit keeps {at:.2f} dB outside A's "
              f"elements; PnP keeps {p['psnr']:.2f} dB: {'PnP above the curve' if p['psnr'] > at else 'PnP below'}")
    else:
        print(f"PnP's gain {p['gain']:+.5f} is outside SDEdit's range of gains [{g[0]:+.5f}, {g[-1]:+.5f}]")
    print(f"wall time {time.perf_counter() - start:.0f} s, torch threads {torch.get_num_threads()}")
    print(json.dumps({"pnp_typicality_gain": round(p["gain"], 6), "pnp_psnr_outside": round(p["psnr"], 3),
                      "sdedit_typicality_gain": round(s["gain"], 6), "sdedit_psnr_outside": round(s["psnr"], 3),
                      "pnp_images_per_s": round(p["speed"], 3),
                      "sdedit_psnr_at_pnp_gain": None if at is None else round(at, 3)}))


if __name__ == "__main__":
    main()
