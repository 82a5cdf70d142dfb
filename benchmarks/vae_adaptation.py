"""How fast a user's images get latents that keep them on this CPU: held-out PSNR against CPU minutes.

    python benchmarks/vae_adaptation.py [--domains shapes,textures,digits,radiographs,photos] [--n-train 400]
                                        [--steps 1500] [--every 250] [--designs JSON] [--threads 2]
                                        [--train-on own|broad]

For each held-out domain of benchmarks/heldout_domains.py (none is in any corpus of the shipped base),
a user's folder of --n-train images (indices after the test images; digits from sklearn's training
split) trains an autoencoder through finetune.vae_adapt.adapt, the function `diffmine finetune
--base tiny` calls when its guard finds the base below the floor (--adapt-vae auto). Every --every
steps the held-out images (the first --n-test of the domain; digits: the held-out split) are
reconstructed from the posterior mean: the curve is PSNR against steps and CPU seconds (measurement
time excluded). --designs compares recipes ([{"name", "family", "lr", "batch_size", "latent_channels"}]):
family "dc" is the fresh fast autoencoder `diffmine finetune` trains (diffmine.core.autoencoders, the
default design), "kl" the shipped base's own VAE trained further ("latent_channels" widens its latent
first, keeping the trained weights: benchmarks/latent_width.py), "kl-fresh" a random-weight one of the
shipped layout.

Settings are chosen on `--domains broad`: the shipped base's own pretraining generators
(diffmine.datasets.broad: procedural images and crops of the training photographs), a validation set
of the same kinds; the held-out domains are then measured once with what was chosen.
With --train-on broad, each design is trained once, on --n-train images of the broad generators
(the selection data above), and measured on every held-out domain: whether one fixed autoencoder,
trained before any user arrives, keeps images of domains it never saw (keys `psnr_<design>_<domain>_db`
as above; the curve has one row per domain at each measurement).
Each run appended to results/vae_adaptation.json with per-image final PSNR (benchmarks.records).
Target: lower end of the 95 % interval >= 26 dB on at least four held-out domains.
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


def user_folder(domain: str, n_train: int, n_test: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(the user's training images, the held-out ids, the held-out images), disjoint."""
    from benchmarks.heldout_domains import heldout_images

    if domain == "broad":  # selection data: the base's own pretraining generators, never a held-out domain
        return broad_folder(n_train, seed=1), *broad_folder(n_test, seed=2, ids=True)  # fixed: selection data

    if domain == "digits":  # the held-out split is the test; the user's images come from the training split
        from sklearn.datasets import load_digits

        from diffmine.core.images import to_tensor_array
        from diffmine.datasets.broad import digit_image, digits_split

        d, (train, _) = load_digits(), digits_split()
        user = np.stack([to_tensor_array(digit_image(d.images[k], size).convert("RGB")) for k in train[:n_train]])
        ids, test = heldout_images(domain, n_test, size, seed)
        return user.astype(np.float32), ids, test
    ids, images = heldout_images(domain, n_test + n_train, size, seed)
    return images[n_test:], ids[:n_test], images[:n_test]


def broad_folder(n: int, seed: int, size: int = 64, ids: bool = False):
    """n images alternating the broad corpus's procedural kinds and crops of its training photographs."""
    from diffmine.core.images import to_tensor_array
    from diffmine.datasets.broad import PROCEDURAL, photo_crop, photo_sources, procedural_image

    photos = photo_sources()
    names = sorted(photos)
    images = []
    for i in range(n):
        rng = np.random.default_rng([seed, 4242, i])  # not the corpus's own (seed, domain, index) streams
        if i % 2:
            images.append(photo_crop(rng, photos[names[(i // 2) % len(names)]], size))
        else:
            images.append(procedural_image(rng, PROCEDURAL[(i // 2) % len(PROCEDURAL)], size))
    arrays = np.stack([to_tensor_array(im.convert("RGB")) for im in images]).astype(np.float32)
    return ([f"broad_{i:04d}" for i in range(n)], arrays) if ids else arrays


def make_autoencoder(design: dict):
    """The autoencoder a design starts from (see the module's docstring)."""
    from diffusers import AutoencoderKL

    from benchmarks.latent_width import widen_latents
    from diffmine.core.autoencoders import FAST_LATENT_CHANNELS, fast_autoencoder
    from diffmine.core.models import resolve_model
    from diffmine.core.tiny import build_tiny_bundle

    family = design.get("family", "kl")
    if family == "dc":
        return fast_autoencoder(int(design.get("latent_channels", FAST_LATENT_CHANNELS)), seed=0)
    if family == "kl-fresh":
        return build_tiny_bundle(latent_channels=int(design.get("latent_channels", 4))).vae
    if family != "kl":
        raise ValueError(f"unknown design family {family!r}: dc, kl or kl-fresh")
    vae = AutoencoderKL.from_pretrained(resolve_model("tiny"), subfolder="vae")
    if design.get("latent_channels"):  # a wider latent, same output at step 0 (benchmarks/latent_width.py)
        vae = widen_latents(vae, int(design["latent_channels"]))
    return vae


def main(argv=None) -> dict:
    import torch

    from benchmarks.records import mean_interval, protocol_argument, save_run
    from diffmine.core.reconstruction import psnr_db, reconstruct
    from finetune import vae_adapt
    from finetune.config import ADAPT_VAE_STEPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="shapes,textures,digits,radiographs,photos")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=ADAPT_VAE_STEPS)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--designs", default=json.dumps([{"name": "fast", "family": "dc", "lr": vae_adapt.ADAPT_LR,
                                                      "batch_size": vae_adapt.ADAPT_BATCH}]))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the held-out domains' image seed (heldout_images); --domains broad is fixed")
    p.add_argument("--train-on", choices=("own", "broad"), default="own",
                   help="own: an autoencoder per domain on its user's folder; broad: one on the broad generators")
    protocol_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary, rows, curves = {}, [], []
    domains = args.domains.split(",")
    broad = broad_folder(args.n_train, seed=1, size=args.size) if args.train_on == "broad" else None

    def plans():
        """(the images an autoencoder trains on, {domain: (held-out ids, held-out images)} it is measured on)."""
        if broad is not None:  # one autoencoder for every domain; of each user folder only its held-out part
            yield broad, {d: user_folder(d, 1, args.n_test, args.size, args.seed)[1:] for d in domains}
            return
        for domain in domains:
            user, ids, test = user_folder(domain, args.n_train, args.n_test, args.size, args.seed)
            yield user, {domain: (ids, test)}

    for design in json.loads(args.designs):
        for user, tests in plans():
            vae = make_autoencoder(design)
            clock = {"cpu": 0.0, "t": time.time(), "psnr": {}}

            def measure(step, model, final=False):
                clock["cpu"] += time.time() - clock["t"]
                if final or step % args.every == 0:
                    model.eval()
                    for domain, (_, test) in tests.items():
                        psnr = psnr_db(test, reconstruct(model, test))
                        curves.append({"design": design["name"], "domain": domain, "step": step,
                                       "train_s": round(clock["cpu"], 1), "psnr_db": round(float(psnr.mean()), 2)})
                        print(json.dumps(curves[-1]), flush=True)
                        clock["psnr"][domain] = psnr
                    model.train()
                clock["t"] = time.time()

            vae.eval()
            measure(0, vae, final=True)
            with tempfile.TemporaryDirectory() as cache:
                vae.train()
                vae, _ = vae_adapt.adapt(vae, torch.from_numpy(user), Path(cache), (",".join(tests), design["name"]),
                                         args.steps, seed=0, progress=False, lr=design["lr"],
                                         batch_size=design["batch_size"], on_step=measure)
            if args.steps % args.every:
                measure(args.steps, vae, final=True)
            for domain, (ids, _) in tests.items():
                psnr = clock["psnr"][domain]
                key = f"{design['name']}_{domain}"
                summary[f"psnr_{key}_db"] = round(float(psnr.mean()), 2)
                summary[f"psnr_{key}_db_ci"] = mean_interval(psnr, 2)
                summary[f"train_s_{key}"] = curves[-1]["train_s"]
                rows += [{"design": design["name"], "domain": domain, "image_id": i, "psnr_db": round(float(v), 3)}
                         for i, v in zip(ids, psnr)]
        summary[f"domains_at_target_{design['name']}"] = sum(
            summary[f"psnr_{design['name']}_{d}_db_ci"][0] >= TARGET_DB for d in domains)
    summary.update(curves=curves, target_db=TARGET_DB, threads=args.threads)
    save_run("vae_adaptation", summary, rows, protocol=vars(args), protocol_file=args.protocol)
    print(json.dumps({k: v for k, v in summary.items() if k != "curves"}))
    return summary


if __name__ == "__main__":
    main()
