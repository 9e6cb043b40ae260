"""Several GPTs trained apart (different seeds, one tokenizer) served as one model: the mean of their logits.

Why: a 1 M-parameter GPT learnt from scratch on 8.6k tweets lands a point or
two either side of its recipe's mean depending on the seed alone; averaging
members cancels part of that variance, for the price of running each. The
cache is the members' caches one after another (member-major), so the exported
graph keeps the usual names with `cache_layers` = n_layer x members entries.
A single checkpoint is an ensemble of one, which is what every export is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from model.gpt import KV, GPT


class Ensemble(nn.Module):
    def __init__(self, members: list[GPT]):
        super().__init__()
        arch = {(m.config.n_layer, m.config.n_head, m.config.n_embd, m.config.block_size, m.config.vocab_size)
                for m in members}
        if len(arch) != 1:
            raise ValueError(f"ensemble members must share one architecture, got {sorted(arch)}")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @property
    def cache_layers(self) -> int:
        return self.config.n_layer * len(self.members)

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: list[KV] | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, list[KV]]:
        """As `GPT.forward`; logits are the members' mean, presents the members' in order."""
        n = self.config.n_layer
        logits, presents = [], []
        for i, member in enumerate(self.members):
            past = past_key_values[i * n:(i + 1) * n] if past_key_values else None
            z, p = member(idx, attention_mask, position_ids, past, last_only)
            logits.append(z)
            presents += p
        return (logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)), presents
