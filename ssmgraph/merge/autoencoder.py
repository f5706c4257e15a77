"""Causal autoencoders on hidden states (B×L×D), for superposition (seed 002, made causal).

The published superposition code reconstructs each blended hidden state with
``Conv1d(kernel=3, padding=1)`` over time, so position t reads position t + 1 and a language
model built on it sees the next token. Here no output reads a later input:

- ``linear``: pointwise, x ↦ dec(act(enc(x))) with enc D → ⌈bottleneck·D⌉ and dec back to D;
- ``causal_conv``: the encoder is a Conv1d over time padded on the LEFT only by kernel − 1,
  so output t reads inputs t − kernel + 1 … t; the decoder is pointwise.

``residual`` adds the input back (x + dec(act(enc(x)))) with the decoder started at zero, so
the autoencoder starts as the identity and learns a correction.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("linear", "causal_conv")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class CausalAutoencoder(nn.Module):
    """A bottleneck autoencoder over B×L×D hidden states that never reads later positions.

    ``bottleneck`` is the inner width as a fraction of D (rounded up, at least 1); ``kernel`` is
    the number of positions a ``causal_conv`` encoder reads (the current one and kernel − 1
    before it); ``activation`` sits between encoder and decoder (``identity`` makes the whole
    autoencoder linear)."""

    def __init__(
        self,
        dim: int,
        kind: str = "linear",
        bottleneck: float = 0.75,
        kernel: int = 3,
        residual: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"autoencoder kind must be one of {KINDS}, got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if kernel < 1 or bottleneck <= 0:
            raise ValueError(f"kernel must be ≥ 1 and bottleneck > 0, got {kernel} and {bottleneck}")
        self.dim, self.kind, self.kernel, self.residual = dim, kind, kernel, residual
        self.inner = max(1, math.ceil(dim * bottleneck - 1e-9))
        self.encoder: nn.Module = nn.Linear(dim, self.inner) if kind == "linear" else nn.Conv1d(dim, self.inner, kernel)
        self.activation = ACTIVATIONS[activation]()
        self.decoder = nn.Linear(self.inner, dim)
        if residual:
            nn.init.zeros_(self.decoder.weight)
            nn.init.zeros_(self.decoder.bias)

    def encode(self, x: Tensor) -> Tensor:
        """B×L×D → B×L×inner (before the activation)."""
        if self.kind == "linear":
            return self.encoder(x)
        # Conv1d reads B×D×L; pad (kernel − 1) positions on the left of time, none on the right.
        return self.encoder(F.pad(x.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected B×L×{self.dim} hidden states, got shape {tuple(x.shape)}")
        out = self.decoder(self.activation(self.encode(x)))
        return x + out if self.residual else out
