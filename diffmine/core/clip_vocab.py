"""The real CLIP BPE vocabulary, taken from the file that ships inside `open_clip_torch`.

`import open_clip` needs torchvision, which the CPU install leaves out, so the package's
folder is located without importing it. The vocabulary is rebuilt exactly as CLIP (and the
Hugging Face CLIPTokenizer) lays it out: 256 byte tokens, the same with '</w>', the merges,
then <|startoftext|> and <|endoftext|> -> 49408 ids.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP's merge count, as in open_clip.tokenizer.SimpleTokenizer


def bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed: `pip install --no-deps open_clip_torch ftfy regex` "
                           "provides the CLIP BPE vocabulary for tiny models")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"{path}: CLIP BPE vocabulary missing from open_clip_torch")
    return path


@lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_vocab(folder: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt (Hugging Face CLIPTokenizer files) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path
