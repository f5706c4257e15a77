"""``mix.hyena``: the Hyena operator, gated long convolutions with implicitly parametrised filters.

Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Ré 2023, "Hyena Hierarchy: Towards
Larger Convolutional Language Models" (ICML 2023, arXiv 2302.10866), §3 (Def. 3.1, Alg. 1-3),
following HazyResearch/safari ``standalone_hyena.py`` (``HyenaOperator``, ``HyenaFilter``).
For order N and width D::

    (x¹ … x^N, v) = short_filter(in_proj(u))             Linear D → (N+1)·D, causal depthwise conv (width 3)
    z¹ = x^N ⊙ v                                         (the code gates first: Def. 3.1 with h¹ = δ)
    zⁿ⁺¹ = x^(N-n) ⊙ (hⁿ * zⁿ + bⁿ ⊙ zⁿ)                 n = 1 … N-1, * causal, through the FFT
    out = out_proj(z^N)

so order 2 is out_proj(x¹ ⊙ (h * (x² ⊙ v) + b ⊙ (x² ⊙ v))). The N-1 long filters hⁿ (one per
channel) are implicit: an FFN with sine activations, sin(freq ⊙ ·) (one shared trainable freq),
over positional features of the tap index l — [l/(l_max-1), cos(f·2πl/l_max), -sin(…)]
(ops/hyena_filter.py) — times an exponential-decay window exp(-|δ_c| l/(l_max-1)) + shift whose
rate grows over the channels. The filters have ``l_max`` taps: a longer sequence is convolved
with the same l_max taps (zero beyond), where the reference would cut the sequence.

Optimizer hints (the reference's): the filter FFN and freq train at ``filter_lr`` with no weight
decay; the positional features ``filter_fn.z`` are a parameter at lr 1e-5 (``lr_pos_emb``);
the decay rates are a fixed buffer. Init: PyTorch's for the projections, the conv and the FFN,
freq = ``w``, the skip bias bⁿ ~ N(0, 1).

Recurrent step: Hyena has no fixed-size recurrent form. ``step`` caches the filter inputs zⁿ of
the last l_max - 1 positions and takes the dot product with the taps, so a token costs
O(min(t, l_max)·D) and the state grows with t up to l_max - 1 positions, like attention's KV
cache (distilling Hyena into a recurrence, as Massaroli et al. 2023 do, is not implemented).
State: ``(conv_state (B, (N+1)·D, 3), history (B, N-1, D, T), filters (B, N-1, D, l_max))``:
the last short-conv inputs, the cached zⁿ (zeros in front stand for nothing) and the long
filters, computed once when the state is made (init_state or forward) so a step does not rerun
the filter FFN: a state belongs to the parameters that made it. With ``mask`` (right
padding) the cache holds each sequence's own last positions; outputs at padded positions are 0.

Permutation spaces: ``inner``, the D channels (the rows of every in_proj branch and of the
short conv, each long filter's FFN output rows and decay rate, the skip biases, out_proj's
columns); ``filter_hidden``, the FFN's hidden units (one permutation for every hidden layer,
since freq is shared). Input features: in_proj's columns; output: out_proj's rows and bias.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blocks.optim_hints import mark_optim
from ssmgraph.ops.causal_conv import causal_conv, conv_step, last_inputs, pad_mask, step_window
from ssmgraph.ops.fftconv import fft_conv
from ssmgraph.ops.final_state import mask_lengths, right_align
from ssmgraph.ops.hyena_filter import decay_rates, modulate, positional_features
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype, state_placement
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
    rows_of,
    same_as_input,
)

State = tuple[Tensor, Tensor, Tensor]
SHORT = 3  # width of the short depthwise conv, as the reference


class HyenaFilter(nn.Module):
    """The implicit long filters of ``channels`` channels: (channels, L) taps for L <= l_max."""

    def __init__(
        self,
        channels: int,
        l_max: int,
        *,
        emb_dim: int,
        filter_order: int,
        num_inner_mlps: int,
        w: float,
        fast_decay_pct: float,
        slow_decay_pct: float,
        target: float,
        modulate: bool,
        shift: float,
        filter_lr: float,
    ) -> None:
        super().__init__()
        self.l_max, self.use_modulation, self.shift = l_max, modulate, shift
        self.z = mark_optim(nn.Parameter(positional_features(l_max, emb_dim)), lr=1e-5)
        self.freq = mark_optim(nn.Parameter(torch.full((1, filter_order), float(w))), lr=filter_lr)
        widths = [emb_dim, *[filter_order] * (num_inner_mlps + 1)]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in itertools.pairwise(widths))
        self.layers.append(Linear(filter_order, channels, bias=False))
        for p in self.layers.parameters():
            mark_optim(p, lr=filter_lr)
        self.register_buffer("deltas", decay_rates(channels, fast_decay_pct, slow_decay_pct, target))

    def forward(self, L: int) -> Tensor:
        """The first ``min(L, l_max)`` taps, (channels, min(L, l_max))."""
        h = self.z[:, : min(L, self.l_max)]
        for layer in self.layers[:-1]:
            h = torch.sin(self.freq * layer(h))
        h = self.layers[-1](h)
        if self.use_modulation:
            h = modulate(h, self.deltas, self.l_max, self.shift)
        return h[0].transpose(0, 1)


class Hyena(nn.Module):
    """The Hyena operator over B×L×D (mixer protocol)."""

    def __init__(self, d_model: int, *, order: int = 2, l_max: int = 1024, **filter_args: Any) -> None:
        super().__init__()
        self.d_model, self.order, self.l_max = d_model, order, l_max
        width = d_model * (order + 1)
        self.in_proj = Linear(d_model, width)
        self.short_filter = nn.Conv1d(width, width, SHORT, groups=width)
        self.filter_fn = HyenaFilter(d_model * (order - 1), l_max, **filter_args)
        self.bias = nn.Parameter(torch.randn(order - 1, d_model))
        self.out_proj = Linear(d_model, d_model)

    def _filters(self, L: int) -> Tensor:
        """(N-1, D, min(L, l_max)) taps."""
        return self.filter_fn(L).unflatten(0, (self.order - 1, self.d_model))

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """(zero conv_state, an empty history, the filters)."""
        device, dtype = state_placement(self.in_proj.weight, device, dtype)
        conv = torch.zeros(batch, self.d_model * (self.order + 1), SHORT, device=device, dtype=dtype)
        cdt = compute_dtype(dtype)  # the long convolutions run in at least fp32
        history = torch.zeros(batch, self.order - 1, self.d_model, 0, device=device, dtype=cdt)
        filters = self._filters(self.l_max).to(device=device, dtype=cdt)
        return conv, history, filters.expand(batch, *filters.shape)

    def _keep(self, t: Tensor) -> Tensor:
        """The last l_max - 1 positions of ``t (..., T)``: all a later step reads."""
        return t[..., max(t.shape[-1] - (self.l_max - 1), 0) :]

    def forward(
        self, x: Tensor, *, state: State | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, State]:
        B, L, D = x.shape
        lengths = mask_lengths(mask, L)
        u = self.in_proj(x).transpose(1, 2)  # (B, (N+1)·D, L)
        window = None if state is None else state[0]
        uc = causal_conv(u, self.short_filter.weight, self.short_filter.bias, window)
        cdt = compute_dtype(x.dtype)
        history = []
        with torch.autocast(device_type=x.device.type, enabled=False):  # torch.fft wants fp32 or fp64
            *xs, v = uc.to(cdt).split(D, dim=1)
            past = None if state is None else state[1].to(cdt)
            T = 0 if past is None else past.shape[-1]
            k = self._filters(T + L).to(cdt)
            if k.shape[-1] < T + L:  # no taps past l_max
                k = torch.nn.functional.pad(k, (0, T + L - k.shape[-1]))
            for n, x_n in enumerate(reversed(xs[1:])):
                z = v * x_n
                full = z if past is None else torch.cat([past[:, n], z], dim=-1)
                v = fft_conv(full, k[n])[..., T:] + self.bias[n].to(cdt).unsqueeze(-1) * z
                if return_state:
                    history.append(self._keep(right_align(full, None if lengths is None else lengths + T)))
            y = v * xs[0]
        y = pad_mask(self.out_proj(y.to(x.dtype).transpose(1, 2)), mask)
        if not return_state:
            return y
        filters = self._filters(self.l_max).to(cdt) if state is None else state[2]
        return y, (last_inputs(u, window, SHORT, lengths), torch.stack(history, 1), filters.expand(B, *filters.shape[-3:]))

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: O(T·D) for a history of T positions (see the module doc)."""
        window, past, filters = state
        window = step_window(window, self.in_proj(x_t))
        uc = conv_step(window, self.short_filter.weight, self.short_filter.bias)
        cdt = compute_dtype(x_t.dtype)
        history = []
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            *xs, v = uc.to(cdt).split(self.d_model, dim=-1)
            for n, x_n in enumerate(reversed(xs[1:])):
                z = v * x_n
                full = torch.cat([past[:, n].to(cdt), z.unsqueeze(-1)], dim=-1)  # (B, D, T+1)
                taps = filters[:, n, :, : full.shape[-1]].flip(-1).to(cdt)
                v = (full * taps).sum(-1) + self.bias[n].to(cdt) * z
                history.append(self._keep(full))
            y = v * xs[0]
        return self.out_proj(y.to(x_t.dtype)), (window, torch.stack(history, 1), filters)


_FILTER_ARGS = (
    "emb_dim",
    "filter_order",
    "num_inner_mlps",
    "w",
    "fast_decay_pct",
    "slow_decay_pct",
    "target",
    "modulate",
    "shift",
    "filter_lr",
)


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    if args["emb_dim"] % 2 == 0:
        raise ShapeError(f"emb_dim must be odd (t, then cos/sin pairs), got {args['emb_dim']}")
    if args["fast_decay_pct"] <= 0 or args["slow_decay_pct"] <= 0:
        raise ShapeError("fast_decay_pct and slow_decay_pct must be above 0 (they divide log(target))")
    if not 0 < args["target"] < 1:
        raise ShapeError(f"target must lie in (0, 1) (the window's value at its decay length), got {args['target']:g}")
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> Hyena:
    return Hyena(in_types[0].dim, order=args["order"], l_max=args["l_max"], **{k: args[k] for k in _FILTER_ARGS})


def _spaces(in_types: Sequence[TensorType], *, order: int, filter_order: int, num_inner_mlps: int, **_: Any) -> list[PermSpace]:
    D = in_types[0].dim
    last = f"filter_fn.layers.{num_inner_mlps + 1}.weight"
    inner = (
        PermAxis("in_proj.weight", 0, chunks=order + 1),
        PermAxis("in_proj.bias", 0, chunks=order + 1),
        PermAxis("short_filter.weight", 0, chunks=order + 1),
        PermAxis("short_filter.bias", 0, chunks=order + 1),
        PermAxis(last, 0, chunks=order - 1),
        PermAxis("filter_fn.deltas", 2, chunks=order - 1),
        PermAxis("bias", 1),
        PermAxis("out_proj.weight", 1),
    )
    hidden = [PermAxis("filter_fn.freq", 1), PermAxis(last, 1)]
    for i in range(num_inner_mlps + 1):
        hidden += [PermAxis(f"filter_fn.layers.{i}.weight", 0), PermAxis(f"filter_fn.layers.{i}.bias", 0)]
        if i:
            hidden.append(PermAxis(f"filter_fn.layers.{i}.weight", 1))
    return [
        PermSpace("inner", D, inner, "channels D of every branch and long filter"),
        PermSpace("filter_hidden", filter_order, tuple(hidden), "hidden units of the filter FFN (all its layers alike)"),
        PermSpace(INPUT_SPACE, D, (PermAxis("in_proj.weight", 1),)),
        PermSpace(OUTPUT_SPACE, D, rows_of("out_proj")),
    ]


HYENA = BlockSpec(
    name="mix.hyena",
    examples=({"l_max": 16, "filter_order": 8}, {"order": 3, "l_max": 5, "filter_order": 6, "emb_dim": 5, "shift": 0.1}),
    role="mix",
    doc="Hyena operator: projections to N+1 branches, short causal conv, implicit long filters (sine FFN over "
    "positions, decay window) by FFT, elementwise gating.",
    params=(
        Param("order", int, 2, "order N: N+1 projected branches, N-1 long convolutions", min=2),
        Param("l_max", int, 1024, "number of filter taps (the reference's maximum length; longer inputs are fine)", min=1),
        Param("filter_order", int, 64, "hidden width of the filter FFN", min=1),
        Param("emb_dim", int, 3, "positional features the filter FFN reads (odd: t and cos/sin pairs)", min=3),
        Param("num_inner_mlps", int, 2, "hidden-to-hidden layers of the filter FFN", min=0),
        Param("w", float, 1.0, "initial frequency of the sine activations"),
        Param("fast_decay_pct", float, 0.3, "decay window: fastest channel reaches target at this fraction of l_max", min=0.0),
        Param("slow_decay_pct", float, 1.5, "decay window: slowest channel reaches target at this fraction of l_max", min=0.0),
        Param("target", float, 1e-2, "value of the decay window at a channel's decay length", min=0.0, max=1.0),
        Param("modulate", bool, True, "multiply the filters by the exponential-decay window"),
        Param("shift", float, 0.0, "added to the decay window"),
        Param("filter_lr", float, 1e-3, "learning rate of the filter FFN and freq (no weight decay)", min=0.0),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    reference="Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models; "
    "HazyResearch/safari standalone_hyena.py",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [HYENA]
