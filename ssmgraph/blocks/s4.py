"""S4: the structured (DPLR) state-space layer with HiPPO initialisation (block ``mix.s4``).

Per channel h, a state matrix in diagonal-plus-low-rank form ``A = Λ - P P^*`` (N/2 stored
conjugate-pair modes, rank 1 — 2 for LegT), obtained by diagonalising the normal part of a
HiPPO matrix (``measure`` legs | legt | fout), discretised by the bilinear transform::

    Ā = (I - Δ/2 A)^{-1} (I + Δ/2 A),  B̄ = (I - Δ/2 A)^{-1} Δ B,  K_l = C Ā^l B̄.

The kernel is computed from its truncated generating function at the roots of unity
(Cauchy sums plus a Woodbury step for the low-rank term, plain torch), and applied by FFT
convolution (length 2L). As in the reference, the parameter ``C`` holds
``C̃ = C (I - Ā^{l_max})``, tied to the kernel length ``l_max``: any input length works —
sequences longer than ``l_max`` are processed in chunks of ``l_max`` with the state carried
between them, which is exact. The recurrent step materialises the dense discretised
matrices (the reference's 'dense' step mode) and recovers the true ``C`` by solving
``C (I - Ā^{l_max}) = C̃``.

The block is the reference S4 block (``S4Block`` around ``FFTConv``):
``y = K * u + D u → GELU → dropout → Linear(c·H → 2H) → GLU`` (the reference applies its
dropout twice around the activation; here it is applied once, after it). The initial
state's response ``C Ā^(t+1) x0`` is computed through the same generating function with
``B`` replaced by ``(I + Δ/2 A) x0 / Δ`` (whose bilinear B̄ is ``Ā x0``), as the reference's
``forward(state=...)`` does.

References: Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State
Spaces", ICLR 2022 (arXiv 2111.00396); Gu et al., "How to Train Your HiPPO", 2022.
Code: state-spaces/s4 ``models/s4/s4.py`` (``SSMKernelDPLR``, ``FFTConv``, ``S4Block``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blocks.conv_ssm import block_params, conv_ssm_factory, conv_ssm_spaces
from ssmgraph.blocks.ssm_params import check_ssm_args, register_ssm_param, ssm_params
from ssmgraph.ops.discretize import bilinear_dense
from ssmgraph.ops.dplr import conj_full, dplr_dense, dplr_kernel
from ssmgraph.ops.fftconv import fft_conv
from ssmgraph.ops.final_state import dense_final_state
from ssmgraph.ops.hippo import MEASURES, log_uniform, nplr
from ssmgraph.ops.precision import complex_dtype, host_init
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, ShapeError, TensorType, same_as_input

StepMats = tuple[Tensor, Tensor, Tensor]


class DPLRSSM(nn.Module):
    """H independent DPLR SSMs (the S4 kernel), mapping (..., H, L) to (..., c, H, L).

    Parameters: ``log_dt (H)``, ``log_A_real``/``A_imag (H, N/2)`` (Λ = -exp(log_A_real) -
    i A_imag), ``P (R, H, N/2, 2)``, ``B (H, N/2, 2)`` — these get ``ssm_lr`` and no weight
    decay — and ``C (c', H, N/2, 2)`` holding C̃ for kernel length ``l_max``. The state is
    the complex half ``(..., H, N/2)`` of a conjugate-symmetric state of size N.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        measure: str = "legs",
        l_max: int = 1024,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.H, self.N2, self.channels, self.l_max = d_model, d_state // 2, channels, l_max
        self.bidirectional = bidirectional
        with host_init() as device:
            self._init_parameters(d_state, measure, l_max, dt_min, dt_max, ssm_lr, device)
        self._step_cache: tuple[tuple, StepMats] | None = None

    def _init_parameters(
        self, d_state: int, measure: str, l_max: int, dt_min: float, dt_max: float, ssm_lr: float, device: torch.device
    ) -> None:
        W, P, B, _ = nplr(measure, d_state)
        H, channels, bidirectional = self.H, self.channels, self.bidirectional
        log_dt = log_uniform((H,), dt_min, dt_max)
        log_re = torch.log((-W.real).clamp(min=1e-4)).expand(H, -1).clone()
        A_imag = (-W.imag).expand(H, -1).clone()
        P = P[:, None, :].expand(-1, H, -1).clone()
        B = B.expand(H, -1).clone()
        c_total = channels * (2 if bidirectional else 1)
        C = torch.randn(c_total, H, self.N2, dtype=torch.complex128)
        # Store C~ = C (I - Ā^l_max) for the initial parameters (the reference's _setup_C).
        dA, _ = bilinear_dense(dplr_dense(torch.complex(-log_re.exp(), -A_imag), P), conj_full(B), log_dt.exp())
        AL = torch.linalg.matrix_power(dA, l_max)
        eye = torch.eye(d_state, dtype=AL.dtype)
        C = torch.einsum("chm,hmn->chn", conj_full(C), eye - AL)[..., : self.N2]
        dtype = torch.get_default_dtype()
        register_ssm_param(self, "log_dt", log_dt.to(device, dtype), ssm_lr)
        register_ssm_param(self, "log_A_real", log_re.to(device, dtype), ssm_lr)
        register_ssm_param(self, "A_imag", A_imag.to(device, dtype), ssm_lr)
        register_ssm_param(self, "P", torch.view_as_real(P).to(device, dtype).contiguous(), ssm_lr)
        register_ssm_param(self, "B", torch.view_as_real(B).to(device, dtype).contiguous(), ssm_lr)
        self.C = nn.Parameter(torch.view_as_real(C).to(device, dtype).contiguous())

    def params(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(Δ (H), Λ (H, N/2), P (R, H, N/2), B (H, N/2), C̃ (c', H, N/2))`` in float64.

        The structured math (generating function, dense matrices) runs in float64 whatever
        the parameter dtype: its Cauchy/Woodbury terms cancel at low frequencies (with
        FouT's near-zero eigenvalue pair the resolvent sums reach ~1e7) and ``I - Ā^l_max``
        can be ill-conditioned. It depends on the parameters only (O(H·N·l_max)), not on
        the batch; results are cast back to the parameter dtype.
        """
        f64 = torch.float64
        dt = torch.exp(self.log_dt.to(f64))
        Lam = torch.complex(-torch.exp(self.log_A_real.to(f64)), -self.A_imag.to(f64))
        P, B, C = (torch.view_as_complex(t.to(f64)) for t in (self.P, self.B, self.C))
        return dt, Lam, P, B, C

    def _complex(self) -> torch.dtype:
        return complex_dtype(self.C.dtype)

    def dense(self) -> tuple[Tensor, Tensor]:
        """The dense discretised ``Ā (H, N, N)`` and ``B̄ (H, N)`` on the full conjugate-pair state."""
        dt, Lam, P, B, _ = self.params()
        dA, dB = bilinear_dense(dplr_dense(Lam, P), conj_full(B), dt)
        return dA.to(self._complex()), dB.to(self._complex())

    def kernel(self, L: int | None = None) -> Tensor:
        """The kernel ``K (c', H, L)`` (``L <= l_max``; default ``l_max``), ``K_l = C Ā^l B̄``."""
        dt, Lam, P, B, C = self.params()
        k = dplr_kernel(Lam, P, B[None], C, dt, self.l_max)[0, ..., : L or self.l_max]
        return k.to(self.C.dtype)

    def _state_response(self, x: Tensor, L: int) -> Tensor:
        """``Re(C Ā^(t+1) x)`` for t < L: ``x (B, ..., H, N/2)`` → ``(B, ..., c, H, L)``."""
        dt, Lam, P, _, C = self.params()
        x = x.to(Lam.dtype)
        # A x on the full state: Λ x - P (P^* x_full), with P^* x_full = 2 Re(Σ conj(P) x).
        px = 2 * torch.einsum("rhn,...hn->...rh", P.conj(), x).real
        Ax = Lam * x - torch.einsum("rhn,...rh->...hn", P, px.to(P.dtype))
        bs = x / dt.unsqueeze(-1) + Ax / 2  # bilinear B̄ of this is Ā x
        batch = x.shape[:-2]
        k = dplr_kernel(Lam, P, bs.reshape(-1, self.H, self.N2), C[: self.channels], dt, self.l_max)
        return k[..., :L].reshape(*batch, self.channels, self.H, L).to(self.C.dtype)

    def forward(
        self,
        u: Tensor,
        x0: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``u (B, ..., H, L)`` real → ``(y (B, ..., c, H, L), final state or None)`` (no D term)."""
        L, L0, c = u.shape[-1], self.l_max, self.channels
        if self.bidirectional and L > L0:
            raise ValueError(f"bidirectional S4 needs sequences of length <= l_max ({L0}), got {L}")
        k = self.kernel()
        chunks = -(-L // L0)
        need_state = return_state or chunks > 1
        dA, dB = self.dense() if need_state else (None, None)
        x, ys = x0, []
        for i in range(chunks):
            uc = u[..., i * L0 : (i + 1) * L0]
            if self.bidirectional:
                y = fft_conv(uc.unsqueeze(-3), k[:c], k[c:])
            else:
                y = fft_conv(uc.unsqueeze(-3), k)
            if x is not None:
                y = y + self._state_response(x, uc.shape[-1])
            if need_state and (i < chunks - 1 or return_state):
                lc = None if lengths is None else (lengths - i * L0).clamp(0, uc.shape[-1])
                xf = None if x is None else conj_full(x)
                x = dense_final_state(dA, dB, uc, xf, lc)[..., : self.N2]
            ys.append(y)
        return torch.cat(ys, dim=-1), (x if return_state else None)

    def init_state(self, batch_shape: tuple[int, ...], device=None, dtype=None) -> Tensor:
        dtype = complex_dtype(dtype or self.C.dtype)
        return torch.zeros(*batch_shape, self.H, self.N2, dtype=dtype, device=device or self.C.device)

    def step_matrices(self) -> StepMats:
        """``(Ā (H, N, N), B̄ (H, N), C (c, H, N))`` with C recovered from C̃.

        Cached while autograd is off (keyed on the parameters' versions), so decoding pays
        the dense setup once; with autograd on they are rebuilt each call so gradients flow.
        """
        tensors = [t for _, t in self.named_parameters()] + [t for _, t in self.named_buffers()]
        cacheable = not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        key = tuple((id(t), t._version, t.dtype, t.device) for t in tensors)
        if cacheable and self._step_cache is not None and self._step_cache[0] == key:
            return self._step_cache[1]
        dt, Lam, P, B, C = self.params()
        dA, dB = bilinear_dense(dplr_dense(Lam, P), conj_full(B), dt)
        AL = torch.linalg.matrix_power(dA, self.l_max)
        eye = torch.eye(dA.shape[-1], dtype=dA.dtype, device=dA.device)
        C = conj_full(C[: self.channels])
        dC = torch.linalg.solve((eye - AL).transpose(-1, -2), C.permute(1, 2, 0)).permute(2, 0, 1)
        dA, dB, dC = (t.to(self._complex()) for t in (dA, dB, dC))
        mats = (dA, dB, dC)
        self._step_cache = (key, mats) if cacheable else None
        return mats

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One step: ``u (..., H)``, state ``(..., H, N/2)`` → ``(y (..., c, H), new state)``."""
        dA, dB, dC = self.step_matrices()
        n = self.N2
        x = torch.einsum("hmn,...hn->...hm", dA[:, :n], conj_full(x)) + dB[:, :n] * u.unsqueeze(-1)
        y = torch.einsum("chn,...hn->...ch", dC, conj_full(x)).real
        return y, x


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    if args["measure"] == "fout" and args["d_state"] < 4:
        raise ShapeError("measure 'fout' needs d_state >= 4")
    return same_as_input(in_types)


S4 = BlockSpec(
    name="mix.s4",
    examples=({}, {"measure": "fout", "channels": 2, "glu": False}, {"bidirectional": True}),
    role="mix",
    doc="S4 state-space layer: HiPPO DPLR kernel (Cauchy + Woodbury), FFT conv, D skip, GELU, Linear+GLU",
    reference="Gu, Goel, Ré 2022, Efficiently Modeling Long Sequences with Structured State Spaces (S4); "
    "state-spaces/s4 models/s4/s4.py",
    params=(
        *ssm_params(),
        Param("measure", str, "legs", "HiPPO matrix the state matrix is initialised from", choices=MEASURES),
        Param("l_max", int, 1024, "kernel length C~ is tied to; longer inputs run in exact chunks of l_max", min=1),
        *block_params(),
    ),
    factory=conv_ssm_factory(DPLRSSM, "measure", "l_max"),
    shape=_shape,
    perm_spaces=partial(conv_ssm_spaces, dplr=True),
    causal=lambda a: not a["bidirectional"],
    bidirectional=lambda a: a["bidirectional"],
    step=lambda a: not a["bidirectional"],
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [S4]
