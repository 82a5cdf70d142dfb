"""One stable seed helper for every stage: the same parts give the same seed in every process
and Python session (Python's hash() is salted per process; this is not)."""
from __future__ import annotations

import hashlib

import torch


def stable_seed(*parts) -> int:
    """A 63-bit seed from any parts, joined as text with NUL separators."""
    text = "\x00".join(str(int(p)) if isinstance(p, bool) else str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)


def generator(*parts) -> torch.Generator:
    """A CPU generator seeded by `stable_seed(*parts)`."""
    return torch.Generator(device="cpu").manual_seed(stable_seed(*parts))
