"""``mix.liquid_s4``: Liquid-S4 (Hasani et al. 2022), the S4 kernel plus liquid correlation terms.

The state-space model is a linearised liquid time-constant system, x' = (A + B u) x + B u,
y = C x. Unrolling its bilinear discretisation gives the S4 convolution K̄ ∗ u plus terms in
products of inputs, u_i u_j, u_i u_j u_k, ... up to ``liquid_degree``. With the paper's "PB"
kernel (Ā = I for the correlation terms only) the order-p term collapses to one coefficient
per output channel and feature, C · B̄^(p), where B̄ = ΔB / (1 − ΔΛ/2) is the diagonal part of
the bilinear B̄ (the low-rank P is ignored). As in the reference code, B̄^(2) = B̄ (1ᵀB̄) and
B̄^(p+1) = B̄^(p) (1ᵀB̄^(p)): with s = 1ᵀB̄ that is B̄^(p) = B̄ s^(2^(p−1) − 1), so degree 3
gets B̄ s³, not the B̄ s² a plain power would give. Sums run over both halves of every
conjugate pair, so s and every coefficient are real. C is the stored C̃ (the S4 parameter
that the kernel reads), again as in the reference.

Two ways to form the order-p input products u_corr^(p) (``variant``):

- ``causal`` (the default): u_corr^(p)_t = u_t · u_{t−1} ⋯ u_{t−p+1}, zeros before the start,
  added pointwise (no flip). Nothing reads a later input; the recurrent state is the S4 state
  plus the last p − 1 inputs, so the block steps token by token exactly like its forward
  pass. With ``bidirectional`` the anti-causal kernel's half gets the mirrored products
  u_t · u_{t+1} ⋯ u_{t+p−1}.
- ``reference_pb``: the reference code's sequence (``allcombs=True``) — all p-combinations
  (itertools order) of the last n positions, n the smallest with C(n, p) ≥ L, the last L of
  them, their products zero-padded to L — reversed in time and multiplied pointwise. It reads
  future inputs: the block is then non-causal and has no state (fine for pooled
  classification, as on LRA). A sequence too short to have L combinations uses all of them.
  With a padding mask each sequence is computed over its own length, as if it ran alone
  (the reference uses the padded length); that reads the lengths on the host.

``lcontract`` squashes each product before it is weighted (tanh, or LeCun's
1.7159·tanh(0.666·x)), as the reference's option of that name.

``y = K̄ ∗ u + Σ_p C·B̄^(p) ⊙ u_corr^(p) + D u → GELU → Linear + GLU``: the S4 block of
``mix.s4`` (``ssmgraph.kernels.ConvSSMBlock`` around ``DPLRSSM``, the same parameters and
state-dict names under ``ssm.core.``) with the liquid terms added to its SSM output.
``liquid_degree: 1`` drops the liquid terms and leaves plain S4 (the reference requires ≥ 2
and switches the terms off with ``liquid_kernel: null`` instead).

References: Hasani, Lechner, Wang, Chahine, Amini, Rus, "Liquid Structural State-Space
Models", ICLR 2023 (arXiv 2209.12951); raminmh/liquid-s4 ``src/models/sequence/ss/s4.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ssmgraph
from ssmgraph.kernels import DPLRSSM, MEASURES, block_params, check_ssm_args, conj_full, conv_ssm_factory, ssm_params
from ssmgraph.registry.specs import same_as_input

VARIANTS = ("causal", "reference_pb")
CONTRACTIONS = ("tanh", "lecun")
State = tuple[Tensor, Tensor]
"""The causal variant's recurrent state: (S4 state (..., H, N/2) complex, last p − 1 inputs (..., H, p − 1))."""


def combination_index(length: int, p: int) -> Tensor:
    """The reference's all-combinations index: ``(≤ length, p)`` positions, before the flip."""
    n = next(n for n in itertools.count(p) if math.comb(n, p) >= length)
    combos = list(itertools.combinations(range(max(0, length - n), length), p))[-length:] if length else []
    return torch.tensor(combos, dtype=torch.long, device="cpu").reshape(-1, p)


class LiquidSSM(nn.Module):
    """The S4 core (``DPLRSSM``) plus the liquid terms: (..., H, L) → (..., c, H, L)."""

    def __init__(self, core: DPLRSSM, degree: int, variant: str, lcontract: str | None):
        super().__init__()
        self.core, self.degree, self.variant, self.lcontract = core, degree, variant, lcontract
        self.channels, self.bidirectional = core.channels, core.bidirectional

    def coefficients(self) -> Tensor:
        """``C·B̄^(p)`` for p = 2 .. degree: shape (degree − 1, c', H), in the parameters' dtype."""
        dt, Lam, _, B, C = self.core.params()  # float64 / complex128
        dtl = dt.unsqueeze(-1)
        bp = conj_full(dtl * B / (1 - dtl * Lam / 2))  # B̄ (H, N), conjugate pairs included
        c_full = conj_full(C)  # (c', H, N)
        coeffs = []
        for _ in range(2, self.degree + 1):
            bp = bp * bp.sum(-1, keepdim=True)  # the reference's cumulative update
            coeffs.append((c_full * bp).sum(-1).real)
        return torch.stack(coeffs).to(self.core.C.dtype)

    def _contract(self, prod: Tensor) -> Tensor:
        if self.lcontract == "tanh":
            return torch.tanh(prod)
        if self.lcontract == "lecun":
            return 1.7159 * torch.tanh(0.666 * prod)
        return prod

    def _products(self, u: Tensor, past: Tensor) -> list[Tensor]:
        """Causal u_corr^(p), p = 2..degree, each (..., H, L); ``past`` holds the p − 1 inputs before u."""
        ext = torch.cat([past, u], -1)
        length, lag = u.shape[-1], self.degree - 1
        out, prod = [], ext[..., lag:]
        for k in range(1, lag + 1):
            prod = prod * ext[..., lag - k : lag - k + length]
            out.append(self._contract(prod))
        return out

    def _flipped_combinations(self, u: Tensor) -> list[Tensor]:
        """The reference's all-combinations products of ``u (..., H, L)``, reversed in time."""
        length = u.shape[-1]
        out = []
        for p in range(2, self.degree + 1):
            prod = u[..., combination_index(length, p).to(u.device)].prod(-1)
            prod = F.pad(self._contract(prod), (0, length - prod.shape[-1]))
            out.append(prod.flip(-1))
        return out

    def _reference_products(self, u: Tensor, lengths: Tensor | None) -> list[Tensor]:
        if lengths is None:
            return self._flipped_combinations(u)
        L = u.shape[-1]
        rows = [self._flipped_combinations(u[b, ..., :n]) for b, n in enumerate(lengths.tolist())]
        return [torch.stack([F.pad(row[i], (0, L - row[i].shape[-1])) for row in rows]) for i in range(self.degree - 1)]

    def _liquid(self, products: list[Tensor], anti: list[Tensor] | None) -> Tensor:
        coeffs = self.coefficients()  # (degree − 1, c', H)
        c = self.channels
        y = sum(coeffs[i, :c, :, None] * prod.unsqueeze(-3) for i, prod in enumerate(products))
        if anti is not None:
            y = y + sum(coeffs[i, c:, :, None] * prod.unsqueeze(-3) for i, prod in enumerate(anti))
        return y

    def forward(
        self, u: Tensor, x0: State | None = None, lengths: Tensor | None = None, return_state: bool = False
    ) -> tuple[Tensor, State | None]:
        """``u (B, ..., H, L)`` → ``(y (B, ..., c, H, L), final state or None)`` (no D term)."""
        s4_state, past = (None, None) if x0 is None else x0
        y, new_s4 = self.core(u, s4_state, lengths, return_state)
        if self.degree < 2:
            return y, ((new_s4, u[..., :0]) if return_state else None)
        if self.variant == "reference_pb":
            return y + self._liquid(self._reference_products(u, lengths), None), None
        lag = self.degree - 1
        if past is None:
            past = u.new_zeros(*u.shape[:-1], lag)
        anti = None
        if self.bidirectional:  # mirrored products: u_t with the inputs after it
            anti = [p.flip(-1) for p in self._products(u.flip(-1), torch.zeros_like(past))]
        y = y + self._liquid(self._products(u, past), anti)
        if not return_state:
            return y, None
        ext = torch.cat([past, u], -1)
        if lengths is None:
            new_past = ext[..., -lag:]
        else:  # the lag inputs before each sequence's end: ext[n .. n + lag − 1]
            start = lengths.view(-1, *([1] * (ext.dim() - 1)))
            new_past = torch.gather(ext, -1, (start + torch.arange(lag, device=u.device)).expand(*ext.shape[:-1], lag))
        return y, (new_s4, new_past)

    def init_state(self, batch_shape: tuple[int, ...], device=None, dtype=None) -> State:
        real = dtype if dtype is not None and not dtype.is_complex else self.core.C.dtype
        device = device or self.core.C.device
        past = torch.zeros(*batch_shape, self.core.H, max(self.degree - 1, 0), dtype=real, device=device)
        return self.core.init_state(batch_shape, device=device, dtype=dtype), past

    def step(self, u: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: ``u (..., H)`` → ``(y (..., c, H), new state)``; the window keeps the last p − 1 inputs."""
        s4_state, past = state
        y, s4_state = self.core.step(u, s4_state)
        if self.degree < 2:
            return y, (s4_state, past)
        window = torch.cat([past, u.unsqueeze(-1)], -1)  # (..., H, degree): oldest first
        coeffs = self.coefficients()[:, : self.channels]
        prod = u
        for i in range(self.degree - 1):
            prod = prod * window[..., -2 - i]
            y = y + coeffs[i] * self._contract(prod).unsqueeze(-2)
        return y, (s4_state, window[..., 1:])


def _causal(args: Mapping[str, Any]) -> bool:
    return not args["bidirectional"] and (args["variant"] == "causal" or args["liquid_degree"] < 2)


def _shape(in_types: list[ssmgraph.TensorType], **args: Any) -> ssmgraph.TensorType:
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    if args["measure"] == "fout" and args["d_state"] < 4:
        raise ssmgraph.ShapeError("measure 'fout' needs d_state >= 4")
    if args["variant"] == "reference_pb" and args["bidirectional"]:
        raise ssmgraph.ShapeError("variant 'reference_pb' is already non-causal; use bidirectional: false with it")
    return same_as_input(in_types)


def _core(H: int, *, liquid_degree: int, variant: str, lcontract: str | None, **s4_args: Any) -> LiquidSSM:
    """The SSM of the block: ``mix.s4``'s core with the liquid terms added."""
    return LiquidSSM(DPLRSSM(H, **s4_args), liquid_degree, variant, lcontract)


SPEC = ssmgraph.BlockSpec(
    name="mix.liquid_s4",
    role="mix",
    doc="Liquid-S4: the S4 DPLR kernel plus liquid input-correlation terms C·B̄^(p)·u_corr^(p) (PB kernel) up to "
    "liquid_degree; causal by default",
    reference="Hasani et al. 2023, Liquid Structural State-Space Models (ICLR 2023, arXiv 2209.12951); "
    "raminmh/liquid-s4 src/models/sequence/ss/s4.py",
    params=(
        *ssm_params(),
        ssmgraph.Param("measure", str, "legs", "HiPPO matrix the state matrix is initialised from", choices=MEASURES),
        ssmgraph.Param("l_max", int, 1024, "kernel length C~ is tied to; longer inputs run in exact chunks of l_max", min=1),
        ssmgraph.Param(
            "liquid_degree", int, 2, "highest order p of the input products (1: no liquid terms, plain S4)", min=1, max=8
        ),
        ssmgraph.Param(
            "variant",
            str,
            "causal",
            "'causal': products u_t·u_t-1·…; 'reference_pb': the reference's flipped all-combinations "
            "sequence (non-causal, no state)",
            choices=VARIANTS,
        ),
        ssmgraph.Param(
            "lcontract",
            str,
            None,
            "squash the input products: tanh, or LeCun's 1.7159·tanh(0.666x) (null: none)",
            choices=CONTRACTIONS,
            nullable=True,
        ),
        *block_params(),
    ),
    factory=conv_ssm_factory(_core, "measure", "l_max", "liquid_degree", "variant", "lcontract"),
    shape=_shape,
    causal=_causal,
    bidirectional=lambda a: not _causal(a),
    step=_causal,
    examples=(
        {"d_state": 16, "l_max": 64},
        {"d_state": 16, "l_max": 64, "liquid_degree": 3, "lcontract": "lecun", "channels": 2},
        {"d_state": 16, "l_max": 64, "variant": "reference_pb", "liquid_degree": 3},
        {"d_state": 16, "l_max": 64, "bidirectional": True},
    ),
)
