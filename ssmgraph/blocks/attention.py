"""Multi-head self-attention and cross-attention.

``mix.attention`` is scaled dot-product attention (Vaswani et al. 2017) with a fused
``qkv`` projection (GPT-2's ``c_attn``, nanoGPT's ``CausalSelfAttention``), optional
grouped-query attention (Ainslie et al. 2023: ``kv_heads`` key/value heads, each shared by
``heads / kv_heads`` query heads, as Llama's ``repeat_kv``) and optional rotary position
embedding (Su et al. 2021, RoFormer) in the half-split convention of GPT-NeoX and
Hugging Face Llama: feature i is rotated with feature i + head_dim/2 by the angle
pos · base^(-2i/head_dim), optionally scaled for longer contexts (``rope_scaling``: linear,
llama3, yarn; rope.py), of every feature or of the first ``rope_dims`` of each head (GPT-NeoX).
Further options of the Llama-layout families: ``head_dim`` other than
dim / heads, a sliding ``window`` (Mistral), per-head RMSNorm of q and k (``qk_norm``, Qwen3),
and biases on qkv without one on out_proj (``out_bias``, Qwen2); of Gemma 2: a query ``scale``
other than 1/sqrt(head_dim) and soft-capped scores (``softcap``: cap · tanh(s / cap) before the
mask and softmax). The kernel is ``torch.nn.functional.scaled_dot_product_attention``; capped
scores run ``ops.softcap.capped_attention`` (the product, the cap, an fp32 softmax).

Recurrent state (causal only): ``(k_cache, v_cache, key_valid)`` with
``k_cache, v_cache`` of shape (B, kv_heads, S, head_dim) and ``key_valid`` (B, S) bool, the
cache entries that are real tokens (not right padding). The cache grows by concatenation.
The RoPE position of the next token of sequence b is ``key_valid[b].sum()``, so a batch that
was right-padded in one chunk continues each sequence at its own position, and padded
entries are never attended to.

``mix.cross_attention`` attends from x (queries) to a second input ``memory`` (keys,
values), as the decoder of Vaswani et al. 2017 does.

Input features: the columns of ``qkv`` (of ``q_proj`` for x and of ``kv_proj`` for memory
in cross-attention); output features: the rows and bias of ``out_proj``.

Permutation space ``heads``: whole heads, which attend independently and are concatenated
before ``out_proj``. Under GQA a unit is a key/value head together with the ``heads /
kv_heads`` query heads that read it, so the sharing is kept. Whole heads are safe with RoPE
(every head rotates by the same angles); dimensions within a head are not declared: RoPE
rotates fixed pairs of them, and without RoPE their symmetry is per head (a permutation of
each head's own), which a space shared by all heads cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssmgraph.blocks.norm import RMSNorm
from ssmgraph.blocks.rope import ROPE_PARAMS, Rotary, apply_rope, check_rope_args, rope_angles
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import state_placement
from ssmgraph.ops.softcap import capped_attention
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    ShapeError,
    TensorType,
    input_space,
    rows_of,
    same_as_input,
)

AttentionState = tuple[Tensor, Tensor, Tensor]

__all__ = ["ATTENTION", "CROSS_ATTENTION", "Attention", "AttentionState", "CrossAttention", "apply_rope", "rope_angles"]
"""The RoPE helpers live in rope.py; re-exported here, where they were first."""


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, L, H·d) -> (B, H, L, d)."""
    b, length, _ = t.shape
    return t.view(b, length, heads, -1).transpose(1, 2)


def _merge_heads(t: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H·d)."""
    b, _, length, _ = t.shape
    return t.transpose(1, 2).reshape(b, length, -1)


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention with an optional KV cache."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        window: int | None = None,
        rope: bool = False,
        rope_base: float = 10000.0,
        rope_scaling: str = "none",
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        scale: float | None = None,
        softcap: float | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        dropout: float = 0.0,
        **rope_options: Any,
    ):
        """``rope_options``: the other ``rope_*`` parameters (ROPE_PARAMS), for :class:`Rotary`."""
        super().__init__()
        self.dim, self.heads = dim, heads
        self.kv_heads = heads if kv_heads is None else kv_heads
        self.head_dim = dim // heads if head_dim is None else head_dim
        self.q_dim, self.kv_dim = heads * self.head_dim, self.kv_heads * self.head_dim
        self.causal, self.window, self.rope, self.rope_base, self.dropout = causal, window, rope, rope_base, dropout
        self.scale, self.softcap = scale, softcap
        self.qkv = Linear(dim, self.q_dim + 2 * self.kv_dim, bias=bias)
        self.out_proj = Linear(self.q_dim, dim, bias=bias if out_bias is None else out_bias)
        if qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.head_dim, qk_norm_eps), RMSNorm(self.head_dim, qk_norm_eps)
        self.qk_norm = qk_norm
        options = {name.removeprefix("rope_"): value for name, value in rope_options.items()}
        self.rotary = Rotary(self.head_dim, rope_base, scaling=rope_scaling, **options) if rope else None

    def forward(
        self,
        x: Tensor,
        *,
        state: AttentionState | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, AttentionState]:
        if (state is not None or return_state) and not self.causal:
            raise ValueError("a bidirectional mix.attention has no recurrent state (set causal: true)")
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        q, k, v = _split_heads(q, self.heads), _split_heads(k, self.kv_heads), _split_heads(v, self.kv_heads)
        if self.qk_norm:  # per-head RMSNorm before the rotation (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)

        valid = torch.ones(batch, length, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        past = 0 if state is None else state[0].shape[2]
        if self.rotary is not None:
            positions = torch.arange(length, device=x.device)[None]  # (1, L): one table for the batch
            if state is not None:
                positions = positions + state[2].sum(dim=1, keepdim=True)  # (B, L): each sequence's offset
            cos, sin = self.rotary(positions, q.dtype)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # q and k are fresh tensors now; saved for the backward, a view v would keep the
            # whole fused qkv output alive (3x its size): Llama at length 1024 held 16 MiB
            # more per layer than transformers' separate projections.
            v = v.contiguous()
        if state is not None:
            k_cache, v_cache, cache_valid = state
            k = torch.cat((k_cache.to(k.dtype), k), dim=2)
            v = torch.cat((v_cache.to(v.dtype), v), dim=2)
            valid = torch.cat((cache_valid, valid), dim=1)
        new_state = (k, v, valid)

        explicit = mask is not None or past or self.window is not None
        y = self._attend(q, k, v, valid if explicit else None, past)
        y = self.out_proj(_merge_heads(y))
        return (y, new_state) if return_state else y

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None, past: int) -> Tensor:
        """SDPA of queries at cache positions past..past+L-1 over all cached keys."""
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        p = self.dropout if self.training else 0.0
        if key_valid is None and self.softcap is None:  # no padding, no cache: the fused kernels' own causal mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal, scale=self.scale)
        length, total = q.shape[2], k.shape[2]
        if key_valid is None:
            key_valid = torch.ones(q.shape[0], total, dtype=torch.bool, device=q.device)
        q_idx = torch.arange(past, past + length, device=q.device).unsqueeze(1)
        k_idx = torch.arange(total, device=q.device).unsqueeze(0)
        allowed = key_valid[:, None, None, :]  # (B, 1, 1, S)
        if self.causal:
            allowed = allowed & (k_idx <= q_idx)
        if self.window is not None:  # keys less than `window` tokens back (padding not counted)
            pos = key_valid.cumsum(dim=1) - 1
            allowed = allowed & (pos[:, None, past:, None] - pos[:, None, None, :] < self.window)
        # Every query may see its own key, so a padded query never has an empty row (no NaN);
        # valid queries are unaffected (their own key is valid and allowed already).
        allowed = allowed | (k_idx == q_idx)
        if self.softcap is not None:
            return capped_attention(q, k, v, allowed, cap=self.softcap, scale=self.scale, dropout=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p, scale=self.scale)

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> AttentionState:
        """An empty cache: (k, v) of shape (B, kv_heads, 0, head_dim) and no valid keys."""
        device, dtype = state_placement(self.qkv.weight, device, dtype)
        empty = torch.zeros(batch, self.kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return empty, empty.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=device)

    def step(self, x_t: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        y, new_state = self.forward(x_t.unsqueeze(1), state=state, return_state=True)
        return y.squeeze(1), new_state

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, causal={self.causal}, "
            f"head_dim={self.head_dim}, window={self.window}, rope={self.rope}, qk_norm={self.qk_norm}, dropout={self.dropout}"
            + (f", scale={self.scale}" if self.scale is not None else "")
            + (f", softcap={self.softcap}" if self.softcap is not None else "")
        )


class CrossAttention(nn.Module):
    """Multi-head attention from x (queries) to ``memory`` (keys and values)."""

    def __init__(self, dim: int, memory_dim: int, *, heads: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.q_proj = Linear(dim, dim, bias=bias)
        self.kv_proj = Linear(memory_dim, 2 * dim, bias=bias)
        self.out_proj = Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, memory: Tensor, *, mask: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
        """``memory_mask``: optional (B, S) bool, True = a real memory token (keys to attend to).

        ``mask`` (padding of x, the mixer protocol's argument) needs no handling: each query is
        computed independently of the other positions of x, so padding cannot reach valid outputs.
        """
        q = _split_heads(self.q_proj(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv_proj(memory).chunk(2, dim=-1))
        attn_mask = None if memory_mask is None else memory_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out_proj(_merge_heads(y))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dropout={self.dropout}"


def _check_heads(dim: int, heads: int, name: str) -> None:
    if dim % heads:
        raise ShapeError(f"{name}: dim {dim} is not divisible by heads {heads}")


def _attention_shape(
    in_types: Sequence[TensorType], *, heads: int, kv_heads: int | None, head_dim: int | None, **args: Any
) -> TensorType:
    x = same_as_input(in_types)
    if head_dim is None:
        _check_heads(x.dim, heads, "mix.attention")
    if kv_heads is not None and heads % kv_heads:
        raise ShapeError(f"mix.attention: heads {heads} is not a multiple of kv_heads {kv_heads}")
    if args["window"] is not None and not args["causal"]:
        raise ShapeError("mix.attention: window limits how far back a query looks; it needs causal: true")
    if args["softcap"] is not None and args["softcap"] <= 0:
        raise ShapeError(f"mix.attention: softcap must be above 0, got {args['softcap']}")
    check_rope_args(x.dim // heads if head_dim is None else head_dim, args)
    return x


def _cross_shape(in_types: Sequence[TensorType], *, heads: int, **_: Any) -> TensorType:
    if len(in_types) != 2:
        raise ShapeError(f"mix.cross_attention takes inputs x and memory, got {len(in_types)} inputs")
    x, memory = in_types
    same_as_input([x])
    same_as_input([memory])
    if len(x.shape) != 3 or len(memory.shape) != 3:
        raise ShapeError(f"mix.cross_attention expects (batch, seq, dim) inputs, got x {x} and memory {memory}")
    bx, bm = x.shape[0], memory.shape[0]
    if isinstance(bx, int) and isinstance(bm, int) and bx != bm:
        raise ShapeError(f"mix.cross_attention: batch of x ({bx}) differs from batch of memory ({bm})")
    _check_heads(x.dim, heads, "mix.cross_attention")
    return x


def _build_attention(in_types: Sequence[TensorType], **args: Any) -> Attention:
    return Attention(in_types[0].dim, **args)


def _build_cross(in_types: Sequence[TensorType], **args: Any) -> CrossAttention:
    return CrossAttention(in_types[0].dim, in_types[1].dim, **args)


def _attention_spaces(
    in_types: Sequence[TensorType],
    *,
    heads: int,
    kv_heads: int | None,
    head_dim: int | None,
    bias: bool,
    out_bias: bool | None,
    **_: Any,
) -> tuple[PermSpace, ...]:
    dim = in_types[0].dim
    kv = heads if kv_heads is None else kv_heads
    head_dim = dim // heads if head_dim is None else head_dim
    share = heads // kv
    axes = [PermAxis("out_proj.weight", 1, group=share * head_dim)]
    for param in ("qkv.weight", "qkv.bias") if bias else ("qkv.weight",):
        axes += [PermAxis(param, 0, group=share * head_dim), PermAxis(param, 0, group=head_dim, chunks=2, start=heads * head_dim)]
    return (
        PermSpace("heads", kv, tuple(axes), "key/value heads, each with the query heads that share it"),
        PermSpace(INPUT_SPACE, dim, (PermAxis("qkv.weight", 1),)),
        PermSpace(OUTPUT_SPACE, dim, rows_of("out_proj", bias if out_bias is None else out_bias)),
    )


def _cross_spaces(in_types: Sequence[TensorType], *, heads: int, bias: bool, **_: Any) -> tuple[PermSpace, ...]:
    head_dim = in_types[0].dim // heads
    axes = [PermAxis("out_proj.weight", 1, group=head_dim)]
    for part in ("weight", "bias") if bias else ("weight",):
        axes += [PermAxis(f"q_proj.{part}", 0, group=head_dim), PermAxis(f"kv_proj.{part}", 0, group=head_dim, chunks=2)]
    dim, memory = in_types[0].dim, in_types[1].dim
    return (
        PermSpace("heads", heads, tuple(axes), "attention heads"),
        PermSpace(input_space("x"), dim, (PermAxis("q_proj.weight", 1),)),
        PermSpace(input_space("memory"), memory, (PermAxis("kv_proj.weight", 1),)),
        PermSpace(OUTPUT_SPACE, dim, rows_of("out_proj", bias)),
    )


_HEADS = Param("heads", int, 4, "number of attention (query) heads; must divide dim", min=1)
_BIAS = Param("bias", bool, False, "learn biases in the projections")
_DROPOUT = Param("dropout", float, 0.0, "dropout on the attention probabilities (training only)", min=0.0, max=1.0)

ATTENTION = BlockSpec(
    name="mix.attention",
    examples=(
        {},
        {"kv_heads": 2, "rope": True, "bias": True},
        {"causal": False},
        {"heads": 2, "head_dim": 6, "qk_norm": True, "window": 3, "bias": True, "out_bias": False},
        {"rope": True, "rope_scaling": "yarn", "rope_factor": 4.0, "rope_original_len": 4},
        {"heads": 2, "rope": True, "rope_dims": 2},
        {"heads": 2, "scale": 0.25, "softcap": 5.0, "window": 2},
    ),
    role="mix",
    doc="Multi-head scaled dot-product self-attention (causal or bidirectional), optional GQA, RoPE, sliding window.",
    params=(
        _HEADS,
        Param("kv_heads", int, None, "key/value heads for grouped-query attention (null = heads)", min=1, nullable=True),
        Param("head_dim", int, None, "features per head (null = dim / heads)", min=1, nullable=True),
        Param("causal", bool, True, "mask future positions (decoder); false = bidirectional (encoder)"),
        Param(
            "window",
            int,
            None,
            "causal only: attend to the last `window` tokens, itself included (null = all)",
            min=1,
            nullable=True,
        ),
        *ROPE_PARAMS,
        Param("qk_norm", bool, False, "RMSNorm over each head's queries and keys before RoPE (Qwen3's q_norm, k_norm)"),
        Param("qk_norm_eps", float, 1e-6, "epsilon of the qk_norm RMSNorms", min=0.0),
        Param("scale", float, None, "factor of the scores q·k (null = 1/sqrt(head_dim))", min=0.0, nullable=True),
        Param(
            "softcap",
            float,
            None,
            "cap the scores to cap·tanh(s/cap) before the softmax (Gemma 2; null = none)",
            min=0.0,
            nullable=True,
        ),
        _BIAS,
        Param(
            "out_bias", bool, None, "bias in out_proj (null = as `bias`, which then covers qkv only when false)", nullable=True
        ),
        _DROPOUT,
    ),
    factory=_build_attention,
    shape=_attention_shape,
    perm_spaces=_attention_spaces,
    causal=lambda a: a["causal"],
    bidirectional=lambda a: not a["causal"],
    step=lambda a: a["causal"],
    reference=(
        "Vaswani et al. 2017, Attention Is All You Need; Ainslie et al. 2023, GQA; Su et al. 2021, RoFormer (rotary embedding); "
        "Chen et al. 2023 (position interpolation); Peng et al. 2023, YaRN; Beltagy et al. 2020, Longformer (sliding window); Gemma Team 2024, Gemma 2 (soft-capping)"
    ),
)

CROSS_ATTENTION = BlockSpec(
    name="mix.cross_attention",
    role="mix",
    doc="Multi-head attention from x (queries) to memory (keys, values), e.g. an encoder's output.",
    params=(_HEADS, _BIAS, _DROPOUT),
    factory=_build_cross,
    shape=_cross_shape,
    perm_spaces=_cross_spaces,
    inputs=("x", "memory"),
    causal=True,
    reference="Vaswani et al. 2017, Attention Is All You Need (encoder-decoder attention)",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [ATTENTION, CROSS_ATTENTION]
