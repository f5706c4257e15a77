"""Hand-written reference models, independent of the compiler and the block library.

They are what a compiled blueprint is checked against (equivalence tests) and timed against
(benchmarks/bench_overhead.py): the same computation written the way nanoGPT writes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GPTBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then + mlp(ln2(x)); bias-free attention, GELU MLP."""

    def __init__(self, dim: int, heads: int, *, sdpa: bool = False):
        super().__init__()
        self.dim, self.heads, self.sdpa = dim, heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        length = q.shape[-2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=q.device), diagonal=1)
        return scores.masked_fill(future, float("-inf")).softmax(-1) @ v

    def forward(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(self.dim, dim=-1)
        q, k, v = (t.view(b, length, self.heads, self.dim // self.heads).transpose(1, 2) for t in (q, k, v))
        att = self.attention(q, k, v).transpose(1, 2).reshape(b, length, self.dim)
        x = x + self.proj(att)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    """Token + learned position embedding, pre-norm blocks, final LayerNorm, tied LM head."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, max_len: int, *, sdpa: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.h = nn.ModuleList(GPTBlock(dim, heads, sdpa=sdpa) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)

    def load_from_blueprint_model(self, model: nn.Module) -> None:
        """Copy the weights of a model built from blueprints/gpt.yaml."""
        names = {
            "wte.weight": "embed.weight",
            "wpe.weight": "pos.weight",
            "ln_f.weight": "norm_f.weight",
            "ln_f.bias": "norm_f.bias",
        }
        pairs = (
            ("ln1", "norm1"),
            ("ln2", "norm2"),
            ("qkv", "mix.qkv"),
            ("proj", "mix.out_proj"),
            ("fc1", "ffn.fc1"),
            ("fc2", "ffn.fc2"),
        )
        own = self.state_dict()
        for i in range(len(self.h)):
            for mine, theirs in pairs:
                for kind in ("weight", "bias"):
                    if f"h.{i}.{mine}.{kind}" in own:
                        names[f"h.{i}.{mine}.{kind}"] = f"blocks.{i}.{theirs}.{kind}"
        source = model.state_dict()
        self.load_state_dict({k: source[v] for k, v in names.items()})
