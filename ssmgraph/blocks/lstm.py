"""LSTM sequence mixer (Hochreiter & Schmidhuber 1997), a thin wrapper over ``torch.nn.LSTM``.

A simple LSTM: ``nn.LSTM`` (batch-first; cuDNN on GPU) with ``layers``
stacked layers of width ``hidden``, optionally bidirectional (Schuster & Paliwal 1997).
When the LSTM's output width (hidden, or 2·hidden bidirectional) differs from the input
dim, a Linear ``out_proj`` maps it back, so the block keeps the mixer contract B×L×D →
B×L×D. State dict names are torch's: ``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``, ...

State: ``(h, c)``, each of shape (layers · directions, B, hidden), as ``nn.LSTM`` takes.

Padding (``mask``): the sequences are packed with ``pack_padded_sequence`` so the LSTM
stops at each sequence's last valid token: the returned final state is the state after
that token, and the backward direction of a bidirectional LSTM starts from it (padding
never reaches valid outputs). We chose packing over gathering outputs because ``nn.LSTM``
returns per-step outputs of the top layer only, never the per-step cell states of every
layer that a gathered final state would need. Packing reads the lengths on the host (one
device sync), so a masked call is not ``torch.compile(fullgraph=True)``-friendly; unmasked
calls are. Outputs at padded positions are zero.

Permutation spaces ``hidden_l{k}`` (and ``hidden_l{k}_reverse``): the cell units of layer k
in one direction. A unit is a row in each of the four gate chunks of ``weight_ih``,
``weight_hh`` and both biases, a column of ``weight_hh``, and the columns that read it in
the next layer's ``weight_ih`` (or in ``out_proj``). The top layer's units are declared only
when ``out_proj`` exists: without it they are the block's output, the residual stream.

Feature spaces: the input features are the columns of ``weight_ih_l0`` (both directions);
the output features are the rows and bias of ``out_proj`` or, without it, the top layer's
cell units (the axes of its ``hidden_l`` space). A bidirectional LSTM without ``out_proj``
concatenates two directions' cells, which no permutation of its output can reorder as one:
its output keeps a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import state_placement
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    TensorType,
    rows_of,
    same_as_input,
)

LSTMState = tuple[Tensor, Tensor]


class LSTMMixer(nn.Module):
    """``nn.LSTM`` over B×L×D with an optional projection back to D."""

    def __init__(
        self, dim: int, *, layers: int = 1, hidden: int | None = None, dropout: float = 0.0, bidirectional: bool = False
    ):
        super().__init__()
        self.dim = dim
        self.hidden = dim if hidden is None else hidden
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(dim, self.hidden, num_layers=layers, batch_first=True, dropout=dropout, bidirectional=bidirectional)
        width = self.hidden * (2 if bidirectional else 1)
        self.out_proj = Linear(width, dim) if width != dim else None

    def _project(self, y: Tensor) -> Tensor:
        return y if self.out_proj is None else self.out_proj(y)

    def forward(
        self,
        x: Tensor,
        *,
        state: LSTMState | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, LSTMState]:
        if (state is not None or return_state) and self.bidirectional:
            raise ValueError("a bidirectional mix.lstm has no recurrent state (set bidirectional: false)")
        if mask is None:
            y, new_state = self.lstm(x, state)
            y = self._project(y)
        else:
            y, new_state = self._packed(x, state, mask)
            y = self._project(y) * mask.unsqueeze(-1).to(y.dtype)  # padded outputs are zero (out_proj's bias too)
        return (y, new_state) if return_state else y

    def _packed(self, x: Tensor, state: LSTMState | None, mask: Tensor) -> tuple[Tensor, LSTMState]:
        lengths = mask.sum(dim=1)
        # pack_padded_sequence rejects empty sequences: run them on one (padded) token and
        # restore their initial state afterwards.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        y, (h, c) = self.lstm(packed, state)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=h.dtype)
        empty = (lengths == 0)[None, :, None]
        return y, (torch.where(empty, state[0], h), torch.where(empty, state[1], c))

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> LSTMState:
        """Zero (h, c), each (layers · directions, B, hidden)."""
        device, dtype = state_placement(self.lstm.weight_ih_l0, device, dtype)
        shape = (self.lstm.num_layers * (2 if self.bidirectional else 1), batch, self.hidden)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return h, h.clone()

    def step(self, x_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        if self.bidirectional:
            raise ValueError("a bidirectional mix.lstm cannot be stepped")
        y, new_state = self.lstm(x_t.unsqueeze(1), state)
        return self._project(y.squeeze(1)), new_state


def _build(in_types: Sequence[TensorType], **args: Any) -> LSTMMixer:
    return LSTMMixer(in_types[0].dim, **args)


def _spaces(in_types: Sequence[TensorType], *, layers: int, hidden: int | None, bidirectional: bool, **_: Any) -> list[PermSpace]:
    dim = in_types[0].dim
    width = dim if hidden is None else hidden
    directions = ("", "_reverse") if bidirectional else ("",)
    projected = width * len(directions) != dim
    spaces = []
    for layer in range(layers):
        top = layer == layers - 1
        readers = [f"lstm.weight_ih_l{layer + 1}{d}" for d in directions] if not top else ["out_proj.weight"] if projected else []
        for i, d in enumerate(directions):
            gates = [
                PermAxis(f"lstm.{kind}_l{layer}{d}", 0, chunks=4) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            inputs = [PermAxis(f"lstm.weight_hh_l{layer}{d}", 1)] + [PermAxis(r, 1, start=i * width) for r in readers]
            if not top or projected:
                spaces.append(
                    PermSpace(
                        f"hidden_l{layer}{d}", width, (*gates, *inputs), f"cell units of layer {layer}{d.replace('_', ', ')}"
                    )
                )
            elif not bidirectional:  # the top layer's cells are the output
                spaces.append(PermSpace(OUTPUT_SPACE, dim, (*gates, *inputs)))
    spaces.append(PermSpace(INPUT_SPACE, dim, tuple(PermAxis(f"lstm.weight_ih_l0{d}", 1) for d in directions)))
    if projected:
        spaces.append(PermSpace(OUTPUT_SPACE, dim, rows_of("out_proj")))
    return spaces


LSTM = BlockSpec(
    name="mix.lstm",
    examples=({}, {"hidden": 12, "layers": 2}, {"bidirectional": True}),
    role="mix",
    doc="Stacked LSTM (torch.nn.LSTM), optionally bidirectional, projected back to the input dim.",
    params=(
        Param("layers", int, 1, "number of stacked LSTM layers", min=1),
        Param("hidden", int, None, "hidden size (null = input dim); out_proj maps back when it differs", min=1, nullable=True),
        Param("dropout", float, 0.0, "dropout between stacked layers (training only)", min=0.0, max=1.0),
        Param("bidirectional", bool, False, "also run right-to-left and concatenate (not causal, no step)"),
    ),
    factory=_build,
    shape=same_as_input,
    perm_spaces=_spaces,
    causal=lambda a: not a["bidirectional"],
    bidirectional=lambda a: a["bidirectional"],
    step=lambda a: not a["bidirectional"],
    reference=(
        "Hochreiter & Schmidhuber 1997, Long Short-Term Memory; torch.nn.LSTM; "
        "Schuster & Paliwal 1997, Bidirectional Recurrent Neural Networks"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [LSTM]
