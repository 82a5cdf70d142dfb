"""The typicality engine against the published code's way of computing the same maps.

1. Equal work: the engine is handed exactly the reference's draws (N = 100, t uniform, in
   mini-batches of 10, same draws for every image); the maps must agree to float tolerance.
   Reported: images/s of both (target: engine >= 1.5x).
2. Time to equal quality: against a precise map per image (N = 1000 stratified draws, another
   seed), the mean per-image correlation of the reference's maps and of the engine with its
   default settings, and their speeds (target: correlation >= the reference's at >= 5x images/s).

Precision: on a CPU everything runs fp32; on a GPU the reference runs fp16, as the published loop
does, and equal work is compared at fp16 too, while "defaults" use what `--dtype auto` picks (bf16).
Intervals (95 %): speed ratios by a bootstrap over the timed groups of images, correlations and
their margin by a paired bootstrap over images. Each run is appended to results/typicality_speed.json
(per-image and per-group rows in results/typicality_speed/).

Last line, one JSON object: {"equal_work_ratio", "equal_work_ratio_ci", "max_abs_diff", "reference_corr",
"engine_corr", "corr_margin_ci", "time_to_quality_ratio", "time_to_quality_ratio_ci"}.

    python benchmarks/typicality_speed.py [--model DIR --data DIR] [--images 32] [--device cpu] [--bf16]
    python benchmarks/typicality_speed.py --random-sd15 512 --images 8 --precise-draws 400   # on a GPU
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks.records, as a script too
import typicality_common as tc  # noqa: E402

from typicality import engine  # noqa: E402


def interleaved(runs: dict, n: int, group: int = 4) -> tuple[dict, dict, dict]:
    """Run each contender on the same groups of images, alternating their order group by group,
    so that load from other processes on a shared machine falls on all of them alike.
    Returns (maps per contender, images/s per contender, seconds per group per contender)."""
    maps, secs = {k: [] for k in runs}, {k: [] for k in runs}
    for gi, lo in enumerate(range(0, n, group)):
        g = slice(lo, min(n, lo + group))
        for k in (list(runs) if gi % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            maps[k].append(runs[k](g))
            secs[k].append(time.perf_counter() - t0)
    return ({k: np.concatenate(v) for k, v in maps.items()}, {k: n / sum(secs[k]) for k in runs},
            {k: np.array(v) for k, v in secs.items()})


def main() -> None:
    args = tc.parse_args(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--bf16", action="store_true", help="also time the engine's defaults in bfloat16 (not in the JSON)"))
    start = time.perf_counter()
    bundle, prompts, ids, images, labels, what = tc.load_setup(args)
    print(f"setup: {what}")
    tc.warm_up(bundle, prompts, ids, images, labels)
    # "Defaults" include the precision `diffmine typicality` picks here (--dtype auto): fp32 on a CPU,
    # bf16 on a GPU that has it. Equal work stays in the reference's fp32.
    from diffmine.core.runtime import resolve_dtype
    auto = resolve_dtype("auto", torch.device(args.device))
    published = torch.float16 if torch.device(args.device).type == "cuda" else torch.float32
    plain = copy.deepcopy(bundle)  # diffusers' own attention processors, for the reference
    plain.unet.set_attn_processor(AttnProcessor2_0())
    equal_bundle = bundle
    if published != torch.float32:  # the published loop's precision, for it and for equal work
        plain, equal_bundle = plain.to(dtype=published), copy.deepcopy(bundle).to(dtype=published)
    tuned, plain_tuned = bundle, plain
    if auto != torch.float32:
        tuned, plain_tuned = copy.deepcopy(bundle).to(dtype=auto), copy.deepcopy(plain).to(dtype=auto)
        tc.warm_up(tuned, prompts, ids, images, labels)
    low = copy.deepcopy(bundle).to(dtype=torch.bfloat16) if args.bf16 and auto != torch.bfloat16 else None

    def engine_run(b=bundle, **kw):
        return lambda g: tc.engine_maps(b, prompts, ids[g], images[g], labels[g], **kw)[0]

    runs = {
        "reference": lambda g: tc.reference_maps(plain, prompts, ids[g], images[g], labels[g])[0],
        "equal": engine_run(equal_bundle, draw_fn=lambda image_id, shape: tc.reference_draws(shape)),  # its draws
        "default": engine_run(tuned),  # the engine's default settings
        "stock_attention": engine_run(plain_tuned, share_prompts=False),  # informational: without per-prompt keys/values
        **({"bf16": engine_run(low)} if low is not None else {}),
    }
    maps, ips, group_s = interleaved(runs, len(ids))
    ref_ips = ips["reference"]
    max_abs = float(np.abs(maps["reference"] - maps["equal"]).max())
    scale = float(np.abs(maps["reference"]).max())
    print(f"1. equal work (N=100 reference draws): reference {ref_ips:.2f} img/s, engine {ips['equal']:.2f} img/s "
          f"({ips['equal'] / ref_ips:.2f}x); max |diff| {max_abs:.2e} (maps up to {scale:.2e})")
    print(f"   engine defaults with stock attention (keys/values per row): {ips['stock_attention']:.2f} img/s; "
          f"with keys/values per prompt {ips['default']:.2f} img/s ({ips['default'] / ips['stock_attention']:.2f}x)")

    truth = tc.precise_maps(bundle, prompts, ids, images, labels, args.precise_draws)
    per_image = {k: tc.correlations(m, truth) for k, m in maps.items()}
    corr = {k: float(v.mean()) for k, v in per_image.items()}
    print(f"2. time to quality: reference N=100 uniform: correlation {corr['reference']:.4f} at {ref_ips:.2f} img/s; "
          f"engine defaults (N={engine.DEFAULT_DRAWS}, {engine.DEFAULT_SCHEDULE}, "
          f"antithetic={engine.DEFAULT_ANTITHETIC}, {str(tuned.unet.dtype)[6:]}): correlation {corr['default']:.4f} at {ips['default']:.2f} img/s "
          f"({ips['default'] / ref_ips:.2f}x)")
    if low is not None:  # informational: the same defaults in bfloat16 (`diffmine typicality --dtype bf16`)
        print(f"   engine defaults in bf16: correlation {corr['bf16']:.4f} at {ips['bf16']:.2f} img/s "
              f"({ips['bf16'] / ref_ips:.2f}x)")
    from benchmarks.records import save_run
    from diffmine.evaluation.intervals import statistic_estimate

    groups = np.arange(len(group_s["reference"]))
    ratio = lambda k: statistic_estimate(groups, lambda i: group_s["reference"][i].sum() / group_s[k][i].sum())
    equal_ratio, quality_ratio = ratio("equal"), ratio("default")
    margin = statistic_estimate(np.arange(len(ids)),
                                lambda i: per_image["default"][i].mean() - per_image["reference"][i].mean())
    fmt = lambda e: f"{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"
    print(f"intervals (95 %): equal work {fmt(equal_ratio)}x; time to quality {fmt(quality_ratio)}x; "
          f"correlation engine - reference {margin['value']:+.4f} [{margin['ci'][0]:+.4f}, {margin['ci'][1]:+.4f}]")
    wall = time.perf_counter() - start
    print(f"total {wall:.0f} s")
    items = [{"image_id": str(i), **{f"corr_{k}": float(v[n]) for k, v in per_image.items()}}
             for n, i in enumerate(ids)]
    items += [{"group": int(gi), **{f"seconds_{k}": float(v[gi]) for k, v in group_s.items()}} for gi in groups]
    last = {"equal_work_ratio": round(equal_ratio["value"], 3), "equal_work_ratio_ci": [round(x, 3) for x in equal_ratio["ci"]],
            "max_abs_diff": max_abs, "reference_corr": round(corr["reference"], 4), "engine_corr": round(corr["default"], 4),
            "corr_margin_ci": [round(x, 4) for x in margin["ci"]],
            "time_to_quality_ratio": round(quality_ratio["value"], 3),
            "time_to_quality_ratio_ci": [round(x, 3) for x in quality_ratio["ci"]],
            **({"bf16_ratio": round(ips["bf16"] / ref_ips, 3), "bf16_corr": round(corr["bf16"], 4)} if low is not None else {})}
    save_run("typicality_speed", {**last, "setup": what, "device": args.device, "images": len(ids),
                                  "reference_dtype": str(published)[6:], "defaults_dtype": str(auto)[6:],
                                  "images_per_s": {k: round(v, 3) for k, v in ips.items()}, "wall_s": round(wall, 1)},
             items, protocol={"precise_draws": args.precise_draws, "images": args.images, "device": args.device})
    print(json.dumps(last))


if __name__ == "__main__":
    main()
