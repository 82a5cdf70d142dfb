"""Prompt embeddings, each distinct prompt text-encoded once: the one cache every UNet caller uses.

A prompt is encoded on its own, so its embedding does not depend on which other prompts a run
met first (processes that meet labels in another order hold the same rows, bit for bit). The
table lives on the UNet's device, in its dtype, ready for `encoder_hidden_states`.
"""
from __future__ import annotations

from typing import Sequence

import torch


class PromptEmbeddings:
    def __init__(self, bundle):
        self.bundle = bundle
        self._row: dict[str, int] = {}
        self._rows: list[torch.Tensor] = []
        self._table: torch.Tensor | None = None

    def index(self, prompts: Sequence[str]) -> torch.Tensor:
        """Row of each prompt in `table` (CPU, long), encoding the ones not seen yet."""
        unet = self.bundle.unet
        for p in prompts:
            if p not in self._row:
                self._row[p] = len(self._rows)
                self._rows.append(self.bundle.encode_prompts([p])[0].to(unet.device, unet.dtype))
                self._table = None
        return torch.tensor([self._row[p] for p in prompts], dtype=torch.long)

    @property
    def table(self) -> torch.Tensor:
        """(distinct prompts, tokens, width): every prompt seen so far, in the order first seen."""
        if self._table is None:
            self._table = torch.stack(self._rows)
        return self._table

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, tokens, width) embeddings of `prompts`."""
        rows = self.index(prompts)
        return self.table[rows.to(self.table.device)]

    def __len__(self) -> int:
        return len(self._rows)
