"""How fast the small base's VAE adapts to a user's images on this CPU: held-out PSNR against CPU minutes.

    python benchmarks/vae_adaptation.py [--domains shapes,textures,digits,radiographs,photos] [--n-train 400]
                                        [--steps 600] [--every 100] [--designs JSON] [--threads 2]

For each held-out domain of benchmarks/heldout_domains.py (none is in any corpus of the shipped base),
a user's folder of --n-train images (indices after the test images; digits from sklearn's training
split) adapts the shipped base's VAE through finetune.vae_adapt.adapt, the function `diffmine finetune
--base tiny` calls when its guard finds the base below the floor (--adapt-vae auto). Every --every
steps the held-out images (the first --n-test of the domain; digits: the held-out split) are
reconstructed from the posterior mean: the curve is PSNR against steps and CPU seconds (measurement
time excluded). --designs compares recipes ([{"name", "lr", "batch_size", "latent_channels"}]; default: the
shipped one; "latent_channels" widens the latent first, keeping the trained weights: benchmarks/latent_width.py).
Each run appended to results/vae_adaptation.json with per-image final PSNR (benchmarks.records).
Target: lower end of the 95 % interval >= 26 dB on at least four domains.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_DB = 26.0


def user_folder(domain: str, n_train: int, n_test: int, size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(the user's training images, the held-out ids, the held-out images), disjoint."""
    from benchmarks.heldout_domains import heldout_images

    if domain == "digits":  # the held-out split is the test; the user's images come from the training split
        from sklearn.datasets import load_digits

        from diffmine.core.images import to_tensor_array
        from diffmine.datasets.broad import digit_image, digits_split

        d, (train, _) = load_digits(), digits_split()
        user = np.stack([to_tensor_array(digit_image(d.images[k], size).convert("RGB")) for k in train[:n_train]])
        ids, test = heldout_images(domain, n_test, size)
        return user.astype(np.float32), ids, test
    ids, images = heldout_images(domain, n_test + n_train, size)
    return images[n_test:], ids[:n_test], images[:n_test]


def main(argv=None) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from benchmarks.records import save_run
    from benchmarks.vae_reconstruction import interval
    from diffmine.core.models import resolve_model
    from diffmine.core.reconstruction import psnr_db, reconstruct
    from finetune import vae_adapt
    from finetune.config import ADAPT_VAE_STEPS
    from benchmarks.latent_width import widen_latents

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="shapes,textures,digits,radiographs,photos")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=ADAPT_VAE_STEPS)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--designs", default=json.dumps([{"name": "shipped", "lr": vae_adapt.ADAPT_LR,
                                                      "batch_size": vae_adapt.ADAPT_BATCH}]))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary, rows, curves = {}, [], []
    for design in json.loads(args.designs):
        for domain in args.domains.split(","):
            user, ids, test = user_folder(domain, args.n_train, args.n_test, args.size)
            vae = AutoencoderKL.from_pretrained(resolve_model("tiny"), subfolder="vae")
            if design.get("latent_channels"):  # a wider latent, same output at step 0 (benchmarks/latent_width.py)
                vae = widen_latents(vae, int(design["latent_channels"]))
            clock = {"cpu": 0.0, "t": time.time()}

            def measure(step, model, final=False):
                clock["cpu"] += time.time() - clock["t"]
                if final or step % args.every == 0:
                    model.eval()
                    psnr = psnr_db(test, reconstruct(model, test))
                    model.train()
                    curves.append({"design": design["name"], "domain": domain, "step": step,
                                   "train_s": round(clock["cpu"], 1), "psnr_db": round(float(psnr.mean()), 2)})
                    print(json.dumps(curves[-1]), flush=True)
                    clock["psnr"] = psnr
                clock["t"] = time.time()

            vae.eval()
            measure(0, vae, final=True)
            with tempfile.TemporaryDirectory() as cache:
                vae.train()
                vae, _ = vae_adapt.adapt(vae, torch.from_numpy(user), Path(cache), (domain, design["name"]),
                                         args.steps, seed=0, progress=False, lr=design["lr"],
                                         batch_size=design["batch_size"], on_step=measure)
            if args.steps % args.every:
                measure(args.steps, vae, final=True)
            psnr = clock["psnr"]
            key = f"{design['name']}_{domain}"
            summary[f"psnr_{key}_db"] = round(float(psnr.mean()), 2)
            summary[f"psnr_{key}_db_ci"] = interval(psnr)
            summary[f"train_s_{key}"] = curves[-1]["train_s"]
            rows += [{"design": design["name"], "domain": domain, "image_id": i, "psnr_db": round(float(v), 3)}
                     for i, v in zip(ids, psnr)]
        summary[f"domains_at_target_{design['name']}"] = sum(
            summary[f"psnr_{design['name']}_{d}_db_ci"][0] >= TARGET_DB for d in args.domains.split(","))
    summary.update(curves=curves, target_db=TARGET_DB, threads=args.threads)
    save_run("vae_adaptation", summary, rows, protocol={k: v for k, v in vars(args).items()})
    print(json.dumps({k: v for k, v in summary.items() if k != "curves"}))
    return summary


if __name__ == "__main__":
    main()
