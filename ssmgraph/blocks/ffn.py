"""Position-wise feed-forward blocks.

* ``ffn.mlp``: fc2(dropout(act(fc1 x))), the Transformer FFN (Vaswani et al. 2017, §3.3;
  GPT-2's ``c_fc``/``c_proj``), hidden 4·dim by default. Dropout sits on the hidden
  activations; residual dropout is a ``struct.dropout`` node of the blueprint.
* ``ffn.glu``: w_down(act(w_gate x) ⊙ w_up x), the gated linear unit FFN of Shazeer 2020,
  "GLU Variants Improve Transformer" (SwiGLU with silu, GEGLU with gelu). Names and the
  default width follow Llama (facebookresearch/llama ``model.py`` FeedForward: w1 = w_gate,
  w3 = w_up, w2 = w_down; hidden = int(8·dim/3) rounded up to a multiple of ``multiple_of``),
  which keeps the parameter count of a 4·dim MLP.

Both declare one permutation space, ``hidden``: the hidden units (rows of fc1 / w_gate /
w_up, columns of fc2 / w_down), whose order the pointwise activation does not see; the
input features are the columns of fc1 / w_gate / w_up, the output features the rows (and
bias) of fc2 / w_down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from ssmgraph.ops.linear import Linear
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

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """fc2(dropout(act(fc1 x)))."""

    def __init__(self, dim: int, *, hidden: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.activation = activation
        self.fc1 = Linear(dim, hidden, bias=bias)
        self.fc2 = Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(ACTIVATIONS[self.activation](self.fc1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class GLU(nn.Module):
    """w_down(act(w_gate x) * w_up x)."""

    def __init__(self, dim: int, *, hidden: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        self.activation = activation
        self.w_gate = Linear(dim, hidden, bias=bias)
        self.w_up = Linear(dim, hidden, bias=bias)
        self.w_down = Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(ACTIVATIONS[self.activation](self.w_gate(x)) * self.w_up(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def glu_hidden(dim: int, multiple_of: int) -> int:
    """Llama's default GLU width: int(8·dim/3) rounded up to a multiple of ``multiple_of``."""
    hidden = int(8 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _mlp_width(in_types: Sequence[TensorType], hidden: int | None) -> int:
    return 4 * in_types[0].dim if hidden is None else hidden


def _glu_width(in_types: Sequence[TensorType], hidden: int | None, multiple_of: int) -> int:
    return glu_hidden(in_types[0].dim, multiple_of) if hidden is None else hidden


def _build_mlp(in_types: Sequence[TensorType], *, hidden: int | None, **args: Any) -> MLP:
    return MLP(in_types[0].dim, hidden=_mlp_width(in_types, hidden), **args)


def _build_glu(in_types: Sequence[TensorType], *, hidden: int | None, multiple_of: int, **args: Any) -> GLU:
    return GLU(in_types[0].dim, hidden=_glu_width(in_types, hidden, multiple_of), **args)


def _hidden_space(dim: int, width: int, rows: Sequence[str], cols: Sequence[str], bias: bool) -> tuple[PermSpace, ...]:
    axes = [PermAxis(f"{m}.weight", 0) for m in rows] + [PermAxis(f"{m}.weight", 1) for m in cols]
    axes += [PermAxis(f"{m}.bias", 0) for m in rows if bias]
    out = [axis for m in cols for axis in rows_of(m, bias)]
    return (
        PermSpace("hidden", width, tuple(axes), "hidden units"),
        PermSpace(INPUT_SPACE, dim, tuple(PermAxis(f"{m}.weight", 1) for m in rows)),
        PermSpace(OUTPUT_SPACE, dim, tuple(out)),
    )


def _mlp_spaces(in_types: Sequence[TensorType], *, hidden: int | None, bias: bool, **_: Any) -> tuple[PermSpace, ...]:
    return _hidden_space(in_types[0].dim, _mlp_width(in_types, hidden), ("fc1",), ("fc2",), bias)


def _glu_spaces(
    in_types: Sequence[TensorType], *, hidden: int | None, multiple_of: int, bias: bool, **_: Any
) -> tuple[PermSpace, ...]:
    return _hidden_space(in_types[0].dim, _glu_width(in_types, hidden, multiple_of), ("w_gate", "w_up"), ("w_down",), bias)


MLP_SPEC = BlockSpec(
    name="ffn.mlp",
    role="ffn",
    doc="Two-layer position-wise MLP: fc2(act(fc1 x)), hidden 4·dim by default.",
    params=(
        Param("hidden", int, None, "hidden width (null = 4 * dim)", min=1, nullable=True),
        Param("activation", str, "gelu", "nonlinearity between the layers", choices=("gelu", "relu", "silu", "gelu_tanh")),
        Param("bias", bool, True, "learn biases in fc1 and fc2"),
        Param("dropout", float, 0.0, "dropout on the hidden activations (training only)", min=0.0, max=1.0),
    ),
    factory=_build_mlp,
    shape=same_as_input,
    perm_spaces=_mlp_spaces,
    pointwise=True,
    reference="Vaswani et al. 2017, Attention Is All You Need, §3.3",
)

GLU_SPEC = BlockSpec(
    name="ffn.glu",
    examples=({}, {"activation": "gelu", "bias": True}),
    role="ffn",
    doc="Gated FFN (SwiGLU / GEGLU): w_down(act(w_gate x) * w_up x), Llama-sized by default.",
    params=(
        Param("hidden", int, None, "hidden width (null = int(8 * dim / 3) rounded up to multiple_of)", min=1, nullable=True),
        Param("multiple_of", int, 64, "round the default hidden width up to a multiple of this", min=1),
        Param(
            "activation",
            str,
            "silu",
            "gate nonlinearity: silu = SwiGLU, gelu = GEGLU (erf), gelu_tanh = GEGLU with the tanh approximation (Gemma)",
            choices=("silu", "gelu", "gelu_tanh"),
        ),
        Param("bias", bool, False, "learn biases in the three projections"),
    ),
    factory=_build_glu,
    shape=same_as_input,
    perm_spaces=_glu_spaces,
    pointwise=True,
    reference="Shazeer 2020, GLU Variants Improve Transformer; Touvron et al. 2023, LLaMA",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [MLP_SPEC, GLU_SPEC]
