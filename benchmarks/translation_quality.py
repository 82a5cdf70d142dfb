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

  SSIM outside      scikit-image's SSIM map of x_{A->B} against x, averaged outside A's elements

The VAE's own reconstruction is shown as the ceiling of "PSNR outside".

Curves, not points: PnP at several residual-injection shares (`--pnp-shares`; the layout's default,
0.7 for the tiny model, is the headline) and SDEdit at several strengths each give a point
(typicality gain, PSNR outside). The claim is that PnP's curve lies above SDEdit's: at PnP's gain,
SDEdit's curve (linear between its two nearest strengths) keeps less PSNR. Its margin and every
figure carry a 95 % interval from a bootstrap over SOURCE images (the three translations of an
image are resampled together; both methods see the same resample, so the margin is paired).
The claim holds only when the margin's interval excludes 0. Each run is appended to
results/translation_quality.json, one row per translation beside it.

Last line, one JSON object: {"pnp_typicality_gain", "pnp_typicality_gain_ci", "pnp_psnr_outside",
"pnp_ssim_outside", "sdedit_typicality_gain", "sdedit_psnr_outside" (SDEdit at its default strength),
"pnp_images_per_s", "sdedit_psnr_at_pnp_gain", "psnr_margin_at_equal_gain", "psnr_margin_at_equal_gain_ci",
"margin_per_share": {share: [value, lo, hi]}}.

    python benchmarks/translation_quality.py [--per-label 10] [--draws 64] [--work runs/bench-translation]
        [--seed N] [--protocol benchmarks/protocols/translation.json]

`--seed N` generates the towns images with seed N (under WORK/seedN) instead of the recipe's; nothing else changes.
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
PNP_SHARES = (0.5, 0.9)  # besides the layout's own default share ("pnp")


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


def ssim_outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean of scikit-image's SSIM map (RGB, 7 px window) on the pixels of `mask`."""
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(a, b, channel_axis=2, data_range=255, full=True)
    return float(full.mean(axis=2)[mask].mean())


def curve_margin(rows: list[dict], idx: np.ndarray, pnp_method: str) -> float:
    """PSNR of `pnp_method` minus SDEdit's curve (gain -> PSNR over its strengths) at its gain, on rows `idx`."""
    def mean(method, key):
        v = [rows[i][key] for i in idx if rows[i]["method"] == method]
        return float(np.mean(v)) if v else float("nan")

    sd = sorted((mean(m, "gain"), mean(m, "psnr")) for m in {rows[i]["method"] for i in idx}
                if m.startswith("sdedit"))
    g, q = np.array([c[0] for c in sd]), np.array([c[1] for c in sd])
    gain = mean(pnp_method, "gain")
    if len(g) < 2:
        return float("nan")
    # between strengths: linear; beyond them (a resample may shift a gain past an end): the end segment's line
    j = int(np.clip(np.searchsorted(g, gain), 1, len(g) - 1))
    at = q[j - 1] + (q[j] - q[j - 1]) * (gain - g[j - 1]) / max(g[j] - g[j - 1], 1e-12)
    return mean(pnp_method, "psnr") - float(at)


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
    ap.add_argument("--pnp-shares", type=float, nargs="*", default=list(PNP_SHARES),
                    help="further PnP residual-injection shares for its curve (the default share always runs)")
    ap.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS),
                    help=f"SDEdit strengths (the JSON line reports {DEFAULT_STRENGTH}; must be among them)")
    ap.add_argument("--seed", type=int, default=None, help="towns data seed (default: the recipe's)")
    from benchmarks.records import protocol_argument, save_run

    protocol_argument(ap)
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
    work = Path(args.work) / ("" if args.seed is None else f"seed{args.seed}")
    seeded = {} if args.seed is None else {"seed": args.seed}
    # image i of a split does not depend on the split sizes: the first per_label train images are fixed
    split = towns_data(work / "towns", n_train=args.per_label, **seeded) / args.split
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
            **{f"pnp@{sh:g}": {**pnp, "residual_injection": sh} for sh in args.pnp_shares},
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
    rows = []  # one per translation
    for method in outs:
        for r in recs:
            a = r.labels[0]
            mask = elements[r.image_id].union(elements[r.image_id].characteristic(a))
            for b in labels:
                if b == a:
                    continue
                key = f"{method}\x00{r.image_id}\x00{b}"
                t_a, t_b = tr_maps[key]  # conditions (A, B)
                rows.append({"method": method, "source": r.image_id, "source_label": a, "target_label": b,
                             "gain": float(t_b.mean() - src_maps[r.image_id][col[b]].mean()),
                             "fell_pixels": int((t_a[mask] < src_maps[r.image_id][col[a]][mask]).sum()),
                             "element_pixels": int(mask.sum()),
                             "psnr": psnr(tr_u8[key], src_u8[r.image_id], ~mask),
                             "ssim": ssim_outside(tr_u8[key], src_u8[r.image_id], ~mask)})
    vae_psnr = float(np.mean([psnr(vae_u8[r.image_id], src_u8[r.image_id],
                                   ~elements[r.image_id].union(elements[r.image_id].characteristic(r.labels[0])))
                              for r in recs]))

    from diffmine.evaluation.intervals import mean_estimate, statistic_estimate

    results = {}
    for m in outs:
        mine = [x for x in rows if x["method"] == m]
        units = [x["source"] for x in mine]
        results[m] = {"gain": mean_estimate([x["gain"] for x in mine], units),
                      "gain_positive": float(np.mean([x["gain"] > 0 for x in mine])),
                      "fell": sum(x["fell_pixels"] for x in mine) / max(sum(x["element_pixels"] for x in mine), 1),
                      "psnr": mean_estimate([x["psnr"] for x in mine], units),
                      "ssim": mean_estimate([x["ssim"] for x in mine], units), "speed": speed[m]}
    units = [x["source"] for x in rows]
    margins = {m: statistic_estimate(units, lambda idx, m=m: curve_margin(rows, idx, m))
               for m in outs if m.startswith("pnp")}

    ci = lambda e, f="{:+.5f}": f"{f.format(e['value'])} [{f.format(e['ci'][0])}, {f.format(e['ci'][1])}]"
    print()
    print("| method | typicality gain T(x_AB|B)-T(x|B) | share of gains > 0 | A's element pixels where T(.|A) fell "
          "| PSNR outside A's elements (dB) | SSIM outside | images/s |")
    print("|---|---|---|---|---|---|---|")
    for m, v in results.items():
        print(f"| {m} | {ci(v['gain'])} | {v['gain_positive']:.3f} | {v['fell']:.3f} | {ci(v['psnr'], '{:.2f}')} "
              f"| {ci(v['ssim'], '{:.3f}')} | {v['speed']:.2f} |")
    print(f"| VAE reconstruction (ceiling) | | | | {vae_psnr:.2f} | | |")
    gains = {m: v["gain"]["value"] for m, v in results.items()}
    print("\nPnP above SDEdit's curve? PSNR at equal gain minus SDEdit's (dB), 95 % interval over source images:")
    for m, e in margins.items():
        v, (lo, hi) = e["value"], e["ci"]
        inside = min(g for k, g in gains.items() if k.startswith("sdedit")) <= gains[m] <= \
            max(g for k, g in gains.items() if k.startswith("sdedit"))
        verdict = ("above, interval excludes 0" if lo > 0 else "below, interval excludes 0" if hi < 0
                   else "interval includes 0: not shown") + ("" if inside else " (extrapolated: gain beyond the strengths run)")
        print(f"  {m}: {v:+.3f} [{lo:+.3f}, {hi:+.3f}]  {verdict}")
    p, s_ = results["pnp"], results[f"sdedit@{DEFAULT_STRENGTH:g}"]
    head = margins["pnp"]
    at = None if np.isnan(head["value"]) else p["psnr"]["value"] - head["value"]
    wall = time.perf_counter() - start
    print(f"wall time {wall:.0f} s, torch threads {torch.get_num_threads()}")
    r = lambda x, n=3: None if x is None or (isinstance(x, float) and np.isnan(x)) else round(x, n)
    last = {"pnp_typicality_gain": r(p["gain"]["value"], 6), "pnp_typicality_gain_ci": [r(x, 6) for x in p["gain"]["ci"]],
            "pnp_psnr_outside": r(p["psnr"]["value"]), "pnp_psnr_outside_ci": [r(x) for x in p["psnr"]["ci"]],
            "pnp_ssim_outside": r(p["ssim"]["value"], 4),
            "sdedit_typicality_gain": r(s_["gain"]["value"], 6), "sdedit_psnr_outside": r(s_["psnr"]["value"]),
            "sdedit_ssim_outside": r(s_["ssim"]["value"], 4),
            "pnp_images_per_s": r(p["speed"]), "sdedit_psnr_at_pnp_gain": r(at),
            "psnr_margin_at_equal_gain": r(head["value"]), "psnr_margin_at_equal_gain_ci": [r(x) for x in head["ci"]],
            "margin_per_share": {m: [r(e["value"]), r(e["ci"][0]), r(e["ci"][1])] for m, e in margins.items()}}
    summary = {**last, "split": args.split, "vae_psnr_outside": r(vae_psnr), "wall_s": round(wall, 1),
               "methods": {m: {k: (v if not isinstance(v, dict) else {"value": v["value"], "ci": v["ci"]})
                               for k, v in res_.items()} for m, res_ in results.items()}}
    if args.split == "test":  # settings are chosen on training images; only held-out runs are the record
        save_run("translation_quality", summary, rows, protocol_file=args.protocol, protocol={
            "per_label": args.per_label, "draws": args.draws, "pnp_shares": args.pnp_shares,
            "strengths": args.strengths, "earlier_held_out_runs": 3, **({} if args.seed is None else {"data_seed": args.seed})})
    print(json.dumps(last))


if __name__ == "__main__":
    main()
