"""The GPT: nanoGPT's architecture (token + position embeddings, pre-LayerNorm
blocks of causal self-attention and MLP, output head tied to the token
embedding), with a forward pass that takes and returns past keys/values so the
exported ONNX graph can generate one token at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

KV = tuple[torch.Tensor, torch.Tensor]  # (key, value), each [batch, n_head, length, head_dim]


@dataclass
class GPTConfig:
    block_size: int = 128
    vocab_size: int = 2000
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    bias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | None) -> tuple[torch.Tensor, KV]:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if mask is None:  # training: plain causal, right padding never reaches a real token
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | None) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.ln_1(x), mask, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


def attention_bias(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, past+T] keep-mask -> additive [B, 1, T, past+T] bias: causal AND not padding.

    Each query may always see itself, so a padding row never softmaxes over
    nothing (NaN would leak into real rows through 0 * NaN).
    """
    total = attention_mask.shape[1]
    past = total - seq_len
    q_pos = torch.arange(seq_len, device=attention_mask.device).unsqueeze(1) + past
    k_pos = torch.arange(total, device=attention_mask.device).unsqueeze(0)
    allowed = (k_pos <= q_pos).unsqueeze(0) & attention_mask.bool().unsqueeze(1)
    allowed = allowed | (k_pos == q_pos).unsqueeze(0)
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=attention_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(torch.float32).min).unsqueeze(1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters, the tied embedding counted once (position embeddings included)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: list[KV] | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, list[KV]]:
        """idx [B, T] -> logits [B, T, vocab] and the presents (past + these T positions).

        Without mask and past this is nanoGPT's causal forward. With a past or
        padding, pass attention_mask [B, past+T] (1 = real token) and
        position_ids [B, T] (each sequence's own positions, so padding does not shift them).
        `last_only` is nanoGPT's inference shortcut: the head on the last position only (logits [B, 1, vocab]).
        """
        B, T = idx.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=idx.device).unsqueeze(0).expand(B, T)
        mask = None
        if attention_mask is not None or past_len:
            if attention_mask is None:
                attention_mask = torch.ones(B, past_len + T, dtype=torch.long, device=idx.device)
            mask = attention_bias(attention_mask, T)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(position_ids))
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, mask, past_key_values[i] if past_key_values else None)
            presents.append(present)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(self.transformer.ln_f(x)), presents
