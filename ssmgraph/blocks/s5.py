"""S5: the simplified (MIMO, diagonal) state-space layer (block ``mix.s5``).

One multi-input multi-output SSM maps the H features through P complex states (instead of
H single-input SSMs)::

    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,   y_t = 2 Re(C̃ x_t) + D ⊙ u_t

with Λ from the block-diagonal HiPPO-N initialisation: the normal part ``S = A_LegS + P Pᵀ``
of a LegS matrix of size P/J is diagonalised (``Λ_re = -1/2``, ``(Λ_im, V) = eigh(-iS)``) and
repeated on J = ``blocks`` blocks; ``B̃ = V⁻¹B`` and ``C̃ = CV`` with ``V`` block-diagonal.
With conjugate symmetry (default) only the first half of each block's eigenvalues (``eigh``
order) is kept — P/2 states — and the output is ``2 Re(C̃x)``. Each state has its own step
Δ (log-uniform in [dt_min, dt_max]); ZOH (default) or bilinear discretisation. The
recurrence is computed with the work-efficient parallel scan
(:func:`ssmgraph.ops.scan.parallel_scan`, the torch counterpart of
``jax.lax.associative_scan``); ``bidirectional`` adds a reverse scan with its own C̃.

The block is the SSM followed by the S5 ``SequenceLayer`` activation (``half_glu1`` by
default: ``z = dropout(gelu(y)); out = dropout(z ⊙ σ(W z))``); the norm and the residual of
the reference layer belong to the graph.

Permutation space ``states``: the P_s (complex) states, each with its own Λ, Δ, row of B
and column of C̃ (both columns with ``bidirectional``). The tail's projections are H → H,
on the residual stream, so they carry no internal space. Feature spaces: D ⊙ u makes the
SSM's output features its input features, and the GLU tails multiply ``out2``'s output
with them, so input and output share one space (``<through>``: B's columns, C̃'s rows, D,
both axes of ``out2``); ``full_glu`` writes its output with ``out1`` ⊙ σ(``out2``), so
there the output features (their rows) are separate from the input features.

Reference: Smith, Warrington, Linderman, "Simplified State Space Layers for Sequence
Modeling", ICLR 2023 (arXiv 2208.04933). Code: lindermanlab/S5 ``s5/ssm.py``,
``s5/ssm_init.py``, ``s5/layers.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.ssm_params import check_dt_range, register_ssm_param, ssm_params
from ssmgraph.ops.discretize import DISCRETIZATIONS, discretize_diag
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.hippo import hippo_normal, log_uniform
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import complex_dtype, ssm_dtype
from ssmgraph.ops.scan import parallel_scan
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    THROUGH_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    ShapeError,
    TensorType,
    same_as_input,
)

C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
S5_ACTIVATIONS = ("half_glu1", "half_glu2", "full_glu", "gelu")


def _lecun_normal(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """JAX's ``lecun_normal``: truncated normal (±2σ) with variance 1/fan_in, float64."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


class S5SSM(nn.Module):
    """The S5 MIMO SSM: (B, L, H) → (B, L, H) including the D term; state (B, P_s) complex.

    ``P_s`` = d_state/2 with conjugate symmetry, else d_state. Parameters ``Lambda_re``,
    ``Lambda_im``, ``log_step`` (P_s), ``B (P_s, H, 2)`` get ``ssm_lr`` and no weight decay;
    ``C (H, P_s·(2 if bidirectional), 2)`` and ``D (H)`` are ordinary.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 256,
        blocks: int = 8,
        conj_sym: bool = True,
        disc: str = "zoh",
        C_init: str = "trunc_standard_normal",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = False,
        step_rescale: float = 1.0,
        ssm_lr: float = 1e-3,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        H, P = d_model, d_state
        size = P // blocks
        lam, V, _, _ = hippo_normal("legs", size)
        keep = size // 2 if conj_sym else size
        lam, V = lam[:keep], V[:, :keep]
        Lambda = lam.repeat(blocks)
        V_blk = torch.block_diag(*[V] * blocks)  # (P, P_s)
        V_inv = torch.block_diag(*[V.conj().T] * blocks)  # (P_s, P)
        self.H, self.Ps, self.conj_sym, self.disc = H, keep * blocks, conj_sym, disc
        self.clip_eigs, self.step_rescale, self.bidirectional = clip_eigs, step_rescale, bidirectional
        dtype = torch.get_default_dtype()
        B = V_inv @ _lecun_normal((P, H), fan_in=P).to(V_inv.dtype)
        n_c = 2 if bidirectional else 1
        if C_init == "complex_normal":
            C = torch.randn(H, n_c * self.Ps, dtype=torch.complex128)  # real and imag ~ N(0, 1/2)
        else:
            Cs = []
            for _ in range(n_c):
                if C_init == "trunc_standard_normal":  # lecun_normal row by row
                    raw = torch.stack([_lecun_normal((P, 2), fan_in=P) for _ in range(H)])
                else:  # lecun_normal on the whole (H, P, 2) tensor
                    raw = _lecun_normal((H, P, 2), fan_in=P * H)
                Cs.append(torch.view_as_complex(raw.contiguous()) @ V_blk)
            C = torch.cat(Cs, dim=-1)
        register_ssm_param(self, "Lambda_re", Lambda.real.to(dtype).contiguous(), ssm_lr)
        register_ssm_param(self, "Lambda_im", Lambda.imag.to(dtype).contiguous(), ssm_lr)
        register_ssm_param(self, "B", torch.view_as_real(B).to(dtype).contiguous(), ssm_lr)
        register_ssm_param(self, "log_step", log_uniform((self.Ps,), dt_min, dt_max).to(dtype), ssm_lr)
        self.C = nn.Parameter(torch.view_as_real(C).to(dtype).contiguous())
        self.D = nn.Parameter(torch.randn(H, dtype=dtype))

    def discretized(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Λ̄ (P_s), B̄ (P_s, H), C̃ (H, n·P_s))``."""
        re = self.Lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.Lambda_re
        Lam = torch.complex(re, self.Lambda_im)
        dt = self.step_rescale * torch.exp(self.log_step)
        dA, dB_scale, _ = discretize_diag(Lam, dt, self.disc)
        return dA, dB_scale.unsqueeze(-1) * torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def _readout(self, C: Tensor, x: Tensor) -> Tensor:
        y = torch.einsum("hp,...p->...h", C, x).real
        return 2 * y if self.conj_sym else y

    def forward(
        self,
        u: Tensor,
        x0: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``u (B, L, H)`` real → ``(y (B, L, H), state after the last valid token or None)``."""
        dA, dB, C = self.discretized()
        Bu = torch.einsum("ph,blh->blp", dB, u.to(dB.dtype))
        xs = parallel_scan(dA, Bu, dim=1, x0=x0)
        y = self._readout(C[:, : self.Ps], xs) + self.D * u
        if self.bidirectional:
            xs_rev = parallel_scan(dA, Bu.flip(1), dim=1).flip(1)
            y = y + self._readout(C[:, self.Ps :], xs_rev)
        state = None
        if return_state:
            if lengths is None:
                state = xs[:, -1]
            else:
                first = torch.zeros_like(xs[:, 0]) if x0 is None else x0.expand_as(xs[:, 0])
                ext = torch.cat([first.unsqueeze(1), xs], dim=1)
                idx = lengths.view(-1, 1, 1).expand(-1, 1, xs.shape[-1])
                state = torch.gather(ext, 1, idx).squeeze(1)
        return y, state

    def init_state(self, batch: int, device=None, dtype=None) -> Tensor:
        dtype = complex_dtype(dtype or self.C.dtype)
        return torch.zeros(batch, self.Ps, dtype=dtype, device=device or self.C.device)

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        dA, dB, C = self.discretized()
        x = dA * x + torch.einsum("ph,bh->bp", dB, u.to(dB.dtype))
        return self._readout(C[:, : self.Ps], x) + self.D * u, x


class S5Block(nn.Module):
    """S5 SSM followed by the S5 SequenceLayer activation (mixer protocol)."""

    def __init__(self, ssm: S5SSM, activation: str, dropout: float) -> None:
        super().__init__()
        self.ssm, self.activation = ssm, activation
        self.bidirectional = ssm.bidirectional
        H = ssm.H
        if activation == "full_glu":
            self.out1 = Linear(H, H)
        if activation in ("full_glu", "half_glu1", "half_glu2"):
            self.out2 = Linear(H, H)
        self.dropout = nn.Dropout(dropout)

    def _tail(self, y: Tensor) -> Tensor:
        z = self.dropout(F.gelu(y))
        if self.activation == "full_glu":
            return self.dropout(self.out1(z) * torch.sigmoid(self.out2(z)))
        if self.activation == "half_glu1":
            return self.dropout(z * torch.sigmoid(self.out2(z)))
        if self.activation == "half_glu2":  # GELU only on the gate input
            return self.dropout(y * torch.sigmoid(self.out2(z)))
        return z

    def forward(
        self,
        x: Tensor,
        *,
        state: Tensor | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if self.bidirectional and (state is not None or return_state):
            raise ValueError("a bidirectional SSM has no recurrent state (state/return_state)")
        lengths = mask_lengths(mask, x.shape[1])
        if mask is not None:
            x = x * mask.unsqueeze(-1)  # padded inputs must not reach the reverse scan
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, new_state = self.ssm(x.to(dtype), state, lengths, return_state)
        y = self._tail(y.to(x.dtype))
        return (y, new_state) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        if self.bidirectional:
            raise ValueError("a bidirectional SSM cannot be stepped")
        return self.ssm.init_state(batch, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if self.bidirectional:
            raise ValueError("a bidirectional SSM cannot be stepped")
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            y, state = self.ssm.step(x_t.to(dtype), state)
        return self._tail(y.to(x_t.dtype)), state


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    P, J = args["d_state"], args["blocks"]
    if P % J:
        raise ShapeError(f"d_state {P} is not divisible by blocks {J}")
    if args["conj_sym"] and (P // J) % 2:
        raise ShapeError(f"conj_sym needs an even block size, got d_state/blocks = {P // J}")
    check_dt_range(args["dt_min"], args["dt_max"])
    return same_as_input(in_types)


def _build(in_types: list[TensorType], **args: Any) -> S5Block:
    ssm = S5SSM(
        in_types[0].dim,
        d_state=args["d_state"],
        blocks=args["blocks"],
        conj_sym=args["conj_sym"],
        disc=args["disc"],
        C_init=args["C_init"],
        dt_min=args["dt_min"],
        dt_max=args["dt_max"],
        clip_eigs=args["clip_eigs"],
        step_rescale=args["step_rescale"],
        ssm_lr=args["ssm_lr"],
        bidirectional=args["bidirectional"],
    )
    return S5Block(ssm, args["activation"], args["dropout"])


def _spaces(
    in_types: list[TensorType], *, d_state: int, conj_sym: bool, bidirectional: bool, activation: str, **_: Any
) -> tuple[PermSpace, ...]:
    axes = tuple(PermAxis(f"ssm.{p}", 0) for p in ("Lambda_re", "Lambda_im", "log_step", "B"))
    readout = PermAxis("ssm.C", 1, chunks=2 if bidirectional else 1)
    states = PermSpace("states", d_state // 2 if conj_sym else d_state, (*axes, readout), "(complex) states")
    H = in_types[0].dim
    features = (PermAxis("ssm.B", 1), PermAxis("ssm.C", 0), PermAxis("ssm.D", 0))
    if activation == "gelu":
        return (states, PermSpace(THROUGH_SPACE, H, features))
    reads = (*features, PermAxis("out2.weight", 1))
    gate = (PermAxis("out2.weight", 0), PermAxis("out2.bias", 0))
    if activation != "full_glu":  # z ⊙ σ(out2 z) or y ⊙ σ(out2 z): out2's rows are the features
        return (states, PermSpace(THROUGH_SPACE, H, reads + gate))
    reads += (PermAxis("out1.weight", 1),)
    writes = (PermAxis("out1.weight", 0), PermAxis("out1.bias", 0), *gate)
    return (states, PermSpace(INPUT_SPACE, H, reads), PermSpace(OUTPUT_SPACE, H, writes))


_SSM_PARAMS = ssm_params(
    256,
    docs={
        "d_state": "state size P (before conjugate symmetry halves it)",
        "dt_min": "smallest initial step size Δ (one per state, log-uniform)",
        "dt_max": "largest initial step size Δ",
        "ssm_lr": "learning rate of Λ, B, log Δ (no weight decay); 0 freezes them",
    },
)

S5 = BlockSpec(
    name="mix.s5",
    examples=(
        {"d_state": 16, "blocks": 2},
        {"d_state": 16, "blocks": 2, "conj_sym": False, "disc": "bilinear"},
        {"d_state": 16, "bidirectional": True},
    ),
    role="mix",
    doc="S5 MIMO diagonal SSM (block-diagonal HiPPO-N init, per-state Δ, parallel scan) + GLU activation",
    reference="Smith, Warrington, Linderman 2023, Simplified State Space Layers for Sequence Modeling (S5); "
    "lindermanlab/S5 s5/ssm.py",
    params=(
        _SSM_PARAMS.d_state,
        Param("blocks", int, 8, "number J of HiPPO-N blocks on the diagonal of the init", min=1),
        Param("conj_sym", bool, True, "keep half of each conjugate pair and output 2 Re(C x)"),
        Param("disc", str, "zoh", "discretisation of the continuous SSM (zero-order hold or bilinear)", choices=DISCRETIZATIONS),
        Param("C_init", str, "trunc_standard_normal", "initialisation of C", choices=C_INITS),
        _SSM_PARAMS.dt_min,
        _SSM_PARAMS.dt_max,
        Param("clip_eigs", bool, False, "clip Re Λ to <= -1e-4 in the forward pass"),
        Param("step_rescale", float, 1.0, "multiply every Δ (change of sampling rate at test time)", min=0.0),
        _SSM_PARAMS.ssm_lr,
        Param("bidirectional", bool, False, "add a reverse-time scan (non-causal; no step or state)"),
        Param("activation", str, "half_glu1", "S5 SequenceLayer activation", choices=S5_ACTIVATIONS),
        Param("dropout", float, 0.0, "dropout inside the activation", min=0.0, max=0.999),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=lambda a: not a["bidirectional"],
    bidirectional=lambda a: a["bidirectional"],
    step=lambda a: not a["bidirectional"],
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [S5]
