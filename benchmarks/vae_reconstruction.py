"""How well a small base's VAE reconstructs domains it never saw: PSNR with 95 % bootstrap intervals.

    python benchmarks/vae_reconstruction.py [--model tiny|tiny-broad|FOLDER] [--vae-checkpoint F.pt]
                                            [--n 64] [--size 64]

Held-out images of five domains (benchmarks/heldout_domains.py: shapes and textures from a
generator of their own, sklearn digits' held-out split, radiographs from an unused seed, crops of
the scikit-image photographs the broad corpus leaves out), each reconstructed from the posterior
mean (diffmine.core.reconstruction, the commands' guard). --vae-checkpoint reads a VAE training
checkpoint (finetune/vae_train.py, OUT/cache/vae-*.pt) into the tiny architecture: the state of a
run still training. Each run appended to results/vae_reconstruction.json (commit, date, model) with its per-image PSNR
beside it (benchmarks.records). Target for a broad base: >= 26 dB on each.
Last line: {"psnr_<domain>_db", "psnr_<domain>_db_ci", ..., "model"}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
TARGET_DB = 26.0


def load_vae(model: str, checkpoint: str | None):
    import torch

    if checkpoint is None:  # either autoencoder family (the broad base's is the fast AutoencoderDC)
        from diffmine.core.autoencoders import load_autoencoder
        from diffmine.core.models import resolve_model

        return load_autoencoder(resolve_model(model)).eval(), model
    from diffmine.core.tiny import build_tiny_bundle

    vae = build_tiny_bundle(resolution=64).vae
    state = torch.load(checkpoint, weights_only=False)
    vae.load_state_dict(state["vae"])
    return vae.eval(), f"{checkpoint} (VAE step {state['step']})"


def main(argv=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    from benchmarks.heldout_domains import HELDOUT_DOMAINS, heldout_images
    from benchmarks.records import mean_interval, save_run
    from diffmine.core.reconstruction import psnr_db, reconstruct, smallest_kept_px

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="model folder whose vae/ is measured (default: the shipped tiny)")
    p.add_argument("--vae-checkpoint", default=None, help="a VAE training checkpoint instead of --model")
    p.add_argument("--n", type=int, default=64, help="held-out images per domain")
    p.add_argument("--size", type=int, default=64, help="image size in px")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae, name = load_vae(args.model, args.vae_checkpoint)
    summary, rows = {}, []
    for domain in tqdm(HELDOUT_DOMAINS, desc="held-out domains"):
        ids, images = heldout_images(domain, args.n, args.size)
        recon = reconstruct(vae, images)
        psnr = psnr_db(images, recon)
        rows += [{"domain": domain, "image_id": i, "psnr_db": round(float(v), 3)} for i, v in zip(ids, psnr)]
        summary[f"psnr_{domain}_db"] = round(float(psnr.mean()), 2)
        summary[f"psnr_{domain}_db_ci"] = mean_interval(psnr, 2)
        summary[f"smallest_kept_{domain}_px"] = smallest_kept_px(images, recon)
    summary["domains_at_target"] = sum(summary[f"psnr_{d}_db_ci"][0] >= TARGET_DB for d in HELDOUT_DOMAINS)
    summary.update(target_db=TARGET_DB, n_per_domain=args.n, size=args.size, model=name)

    save_run("vae_reconstruction", summary, rows, protocol={"n": args.n, "size": args.size, "model": name})
    print("| domain | PSNR dB | 95 % CI | smallest kept px |\n|---|---|---|---|")
    for d in HELDOUT_DOMAINS:
        lo, hi = summary[f"psnr_{d}_db_ci"]
        print(f"| {d} | {summary[f'psnr_{d}_db']:.2f} | [{lo:.2f}, {hi:.2f}] | {summary[f'smallest_kept_{d}_px']:g} |")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
