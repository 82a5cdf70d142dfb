"""The `diffmine` command: thin argument parsing over functions the tests also call."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _finetune(a: argparse.Namespace) -> None:
    from finetune.prompts import resolve_prompts
    from finetune.train import TrainConfig, train

    prompts = resolve_prompts(a.preset, a.prompt, a.null_prompt, a.null_rate)
    cfg = TrainConfig(
        data=a.data, out=a.out, base=a.base, text_encoder=a.text_encoder, label_column=a.label_column,
        skip_bad=a.skip_bad, prompts=prompts, resolution=a.resolution, batch_size=a.batch_size,
        lr=a.lr, max_steps=a.max_steps, epochs=a.epochs, max_minutes=a.max_minutes,
        vae_steps=a.vae_steps, mixed_precision=a.mixed_precision,
        gradient_checkpointing=a.gradient_checkpointing, ema=a.ema, lora_rank=a.lora_rank,
        checkpoint_every=a.checkpoint_every, resume=a.resume, seed=a.seed, samples_per_label=a.samples_per_label,
    )
    out = train(cfg)
    print(f"model written to {out}")


def _typicality(a: argparse.Namespace) -> None:
    from typicality.engine import run_typicality

    out = run_typicality(model=a.model, data=a.data, out=a.out, draws=a.draws, t_range=tuple(a.t_range),
                         labels=a.labels, batch_size=a.batch_size, seed=a.seed, schedule=a.schedule,
                         label_column=a.label_column, skip_bad=a.skip_bad, sample_latents=a.sample_latents,
                         antithetic=a.antithetic, dtype=a.dtype)
    print(f"typicality written to {out}")


def _mine(a: argparse.Namespace) -> None:
    from mining.mine import MineConfig, run_mining

    cfg = MineConfig(patch=a.patch, per_image=a.per_image, per_label=a.per_label, clusters=a.clusters,
                     feature=a.feature, dift_t=a.dift_t, dift_block=a.dift_block, clip_model=a.clip_model,
                     min_members=a.min_members, min_images=a.min_images, seed=a.seed, n_iter=a.kmeans_iter,
                     spherical=a.spherical)
    out = run_mining(model=a.model, data=a.data, typicality=a.typicality, out=a.out, config=cfg,
                     label_column=a.label_column)
    print(f"report: {Path(out) / 'report.html'}")


def _demo(a: argparse.Namespace) -> None:
    from mining.demo import run_demo

    run_demo(out=a.out, model=a.model, fast=a.fast)


def _assets(a: argparse.Namespace) -> None:
    from mining.demo import build_assets

    build_assets(out=a.out, minutes=a.minutes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmine", description="Visual data mining with diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(s):
        s.add_argument("--data", required=True, help="image folder: a folder per label, or metadata.csv/jsonl")
        s.add_argument("--label-column", default="label", help="label column of metadata.csv/jsonl")
        s.add_argument("--skip-bad", action="store_true", help="skip unreadable images with one warning")

    f = sub.add_parser("finetune", help="adapt a Stable Diffusion model to labeled images")
    data_args(f)
    f.add_argument("--out", required=True, help="output folder (a diffusers SD folder at the end)")
    f.add_argument("--base", default="runwayml/stable-diffusion-v1-5",
                   help="diffusers SD folder or hub id, or 'tiny' for an offline model trained from scratch")
    f.add_argument("--text-encoder", default=None, help="swap in another CLIP text tower (hub id or folder)")
    f.add_argument("--preset", default=None, help="published prompts: cars, faces, street_view, scenes, chest_xray")
    f.add_argument("--prompt", default=None, help="label prompt template with {label}")
    f.add_argument("--null-prompt", default=None, help="prompt standing for 'no label'")
    f.add_argument("--null-rate", type=float, default=None, help="fraction of samples given the null prompt")
    f.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--max-steps", type=int, default=None)
    f.add_argument("--epochs", type=int, default=None)
    f.add_argument("--max-minutes", type=float, default=None)
    f.add_argument("--vae-steps", type=int, default=None, help="VAE training steps (--base tiny only)")
    f.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    f.add_argument("--gradient-checkpointing", action="store_true")
    f.add_argument("--ema", action="store_true")
    f.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead of the full UNet")
    f.add_argument("--checkpoint-every", type=int, default=500)
    f.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    f.add_argument("--samples-per-label", type=int, default=4)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_finetune)

    t = sub.add_parser("typicality", help="per-pixel typicality maps T(x|c)")
    data_args(t)
    t.add_argument("--model", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--draws", type=int, default=None, help="draws per image (default: the engine's)")
    t.add_argument("--t-range", type=float, nargs=2, default=(0.1, 0.7))
    t.add_argument("--labels", choices=["own", "all"], default="own")
    t.add_argument("--schedule", choices=["stratified", "uniform"], default="stratified")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--sample-latents", action="store_true", help="seeded VAE posterior sample instead of its mean")
    t.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None,
                   help="draw noise in (eps, -eps) pairs (default: the engine's)")
    t.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="UNet/VAE precision (auto: bf16 on a GPU that has it, else fp32)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_typicality)

    m = sub.add_parser("mine", help="typical patches -> features -> ranked clusters -> report")
    data_args(m)
    m.add_argument("--model", required=True)
    m.add_argument("--typicality", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--patch", type=int, default=None, help="patch size in px (default: 50 px at 256 px, scaled)")
    m.add_argument("--per-image", type=int, default=5)
    m.add_argument("--per-label", type=int, default=1000)
    m.add_argument("--clusters", type=int, default=32)
    m.add_argument("--feature", choices=["dift", "clip"], default="dift")
    m.add_argument("--clip-model", default=None, help="local open_clip weights for --feature clip")
    m.add_argument("--dift-t", type=int, default=161)
    m.add_argument("--dift-block", type=int, default=1)
    m.add_argument("--kmeans-iter", type=int, default=20, help="FAISS k-means iterations")
    m.add_argument("--spherical", action=argparse.BooleanOptionalAction, default=True,
                   help="spherical k-means (unit-norm centroids, cosine distance)")
    m.add_argument("--min-members", type=int, default=3)
    m.add_argument("--min-images", type=int, default=2)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_mine)

    d = sub.add_parser("demo", help="the whole pipeline on the embedded dataset and shipped model")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--model", default=None, help="model folder (default: the shipped tiny model)")
    d.add_argument("--fast", action="store_true", help="reduced settings (tests)")
    d.set_defaults(func=_demo)

    s = sub.add_parser("assets", help="regenerate the embedded dataset and retrain the shipped model")
    s.add_argument("--out", default="assets")
    s.add_argument("--minutes", type=float, default=None)
    s.set_defaults(func=_assets)
    return p


def main(argv: list[str] | None = None) -> int:
    from finetune.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DataError as exc:  # bad input: one clear line, no traceback
        print(f"diffmine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
