"""Does a second path for the label help a small base learn small elements? The prompt pooled into the time embedding.

    python benchmarks/pooled_label_base.py [--base tiny-broad] [--heads 8] [--work runs/bench-planted] [planted_elements options]

The small bases read the prompt through cross-attention at 8 x 8 latent pixels and coarser only. SDXL
and Imagen also add a pooled text embedding to the timestep embedding, which reaches every ResNet block
at every resolution. This builds WORK/pooled-<base>: the base's folder with its UNet given diffusers'
`addition_embed_type="text"` (attention pooling of the prompt's hidden states, a linear map and a layer
norm, added to the time embedding), its new layer norm zeroed so that the model starts as the base did,
then runs benchmarks/planted_elements.py with `--base` that folder and the other options as given
(recorded in results/planted_elements.json; compare with the run of the same base alone).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pooled_base(base: str, out: Path, heads: int) -> Path:
    """`base`'s folder at `out`, its UNet with the zero-initialised pooled-prompt time embedding."""
    import torch
    from diffusers import UNet2DConditionModel

    from diffmine.core.files import output_folder
    from diffmine.core.models import resolve_model

    source = Path(resolve_model(base))
    if (out / "unet" / "config.json").is_file():
        return out
    with output_folder(out, owned=None) as tmp:  # derived from the base alone: replaced whole
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unet", "checkpoints", "cache"))
        old = UNet2DConditionModel.from_pretrained(source / "unet")
        unet = UNet2DConditionModel.from_config({**old.config, "addition_embed_type": "text",
                                                 "addition_embed_type_num_heads": heads})
        missing, unexpected = unet.load_state_dict(old.state_dict(), strict=False)
        if unexpected or not all(k.startswith("add_embedding.") for k in missing):
            raise SystemExit(f"{source}: its UNet does not take the pooled path as expected ({(missing + unexpected)[:3]})")
        with torch.no_grad():  # adds nothing until finetuning teaches it
            unet.add_embedding.norm2.weight.zero_()
            unet.add_embedding.norm2.bias.zero_()
        unet.save_pretrained(tmp / "unet")
    return out


def main(argv=None) -> dict:
    from benchmarks import planted_elements

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="tiny-broad", help="the small base given the second path")
    p.add_argument("--heads", type=int, default=8, help="attention-pooling heads (64-wide prompt states)")
    p.add_argument("--work", default="runs/bench-planted")
    args, rest = p.parse_known_args(argv)
    base = pooled_base(args.base, Path(args.work) / f"pooled-{Path(args.base).name}-h{args.heads}", args.heads)
    return planted_elements.main(["--base", str(base), "--work", args.work, *rest])


if __name__ == "__main__":
    main()
