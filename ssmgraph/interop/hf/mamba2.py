"""Mamba-2 (transformers ``Mamba2ForCausalLM``) <-> blueprints/mamba2.yaml's layout.

Token embedding, pre-RMSNorm residual layers of the Mamba-2 mixer (no FFN), final RMSNorm,
LM head (untied by default, as ``Mamba2Config``). ``Mamba2Mixer`` and ``mix.mamba2`` both
follow state-spaces/mamba's ``Mamba2``, so the mixer's tensors (in_proj, conv1d, dt_bias,
A_log, D, norm, out_proj) keep their names and shapes; transformers' gated norm is
``norm_before_gate: false`` with one group per B/C group and the layers' ``layer_norm_epsilon``.
``chunk_size`` only sets how the scan is computed, not its result: an import leaves it to
``mix.mamba2``'s default (chosen for its CPU path; transformers' 256 is several times slower
there) and keeps the config's in meta.json, which an export writes back; ``time_step_limit`` is ``dt_limit_min``/``dt_limit_max`` (an infinite upper limit,
written ``Infinity`` or, by transformers 5, ``{"__float__": "Infinity"}``, is null);
``time_step_min``/``max``/``floor`` are dt_bias's initialisation, kept so that a round trip
loses nothing. ``time_step_rank`` is unused by the Mamba-2 mixer and not kept.

``residual_in_fp32`` keeps transformers' residual stream in fp32 when the model runs in half
precision; ssmgraph's residual adds run in the model's dtype, so in fp32 the two agree and in
bf16/fp16 they round differently. Exports write ``residual_in_fp32: false``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import (
    HELP_LAYOUTS,
    TOKEN_IDS,
    ModelReader,
)
from ssmgraph.interop.hf.mamba import MixerStack

MIXER_TENSORS = ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight")
INFINITY = {"__float__": "Infinity"}
"""An infinite number in config.json (``read_config`` tags bare ``Infinity`` this way too, as transformers 5 writes it)."""


def read_dt_limit(config: HFConfig) -> tuple[float, float | None]:
    """``time_step_limit`` as (dt_limit_min, dt_limit_max), an infinite maximum as None."""
    value = config.data.get("time_step_limit", [0.0, INFINITY])
    if not isinstance(value, list) or len(value) != 2:
        raise config.fail("time_step_limit", f"expected a list [min, max], got {value!r}")
    lo, hi = value
    hi = None if hi == INFINITY else hi
    for bound in (lo, hi):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound)):
            raise config.fail("time_step_limit", f"expected numbers (the maximum may be infinite), got {value!r}")
    if lo < 0 or (hi is not None and hi <= lo):
        raise config.fail("time_step_limit", f"expected 0 <= min < max, got {value!r}")
    return float(lo), None if hi is None else float(hi)


@dataclass(frozen=True)
class Mamba2(MixerStack):
    model_type = "mamba2"
    architecture = "Mamba2ForCausalLM"
    title = "Mamba-2"
    signature = "mix.mamba2"
    prefix = "backbone."
    mixer_tensors = MIXER_TENSORS
    carried = (*TOKEN_IDS, "chunk_size")

    vocab: int
    dim: int
    layers: int
    heads: int
    headdim: int
    d_state: int
    d_conv: int
    expand: int
    n_groups: int
    chunk_size: int | None
    """None: ``mix.mamba2``'s default (an import)."""
    eps: float
    tied: bool
    conv_bias: bool
    bias: bool
    dt_min: float
    dt_max: float
    dt_init_floor: float
    dt_limit: tuple[float, float | None]

    @classmethod
    def from_config(cls, config: HFConfig) -> Mamba2:
        dim = config.value("hidden_size", int, 4096, minimum=1)
        expand = config.value("expand", int, 2, minimum=1)
        heads = config.value("num_heads", int, 128, minimum=1)
        headdim = config.value("head_dim", int, 64, minimum=1)
        if heads * headdim != expand * dim:
            raise config.fail(
                "num_heads", f"{heads} heads of head_dim {headdim} are not the hidden_size {dim} × expand {expand} channels"
            )
        groups = config.value("n_groups", int, 8, minimum=1)
        if heads % groups:
            raise config.fail("n_groups", f"{groups} groups do not divide the {heads} heads")
        config.expect("hidden_act", "silu", "silu", "mix.mamba2 gates with SiLU")
        config.value("chunk_size", int, 256, minimum=1)  # checked; meta.json keeps it for the export (module doc)
        return cls(
            vocab=config.value("vocab_size", int, 32768, minimum=1),
            dim=dim,
            layers=config.value("num_hidden_layers", int, 64, minimum=1),
            heads=heads,
            headdim=headdim,
            d_state=config.value("state_size", int, 128, minimum=1),
            d_conv=config.value("conv_kernel", int, 4, minimum=1),
            expand=expand,
            n_groups=groups,
            chunk_size=None,
            eps=config.value("layer_norm_epsilon", float, 1e-5, minimum=0),
            tied=config.value("tie_word_embeddings", bool, False),
            conv_bias=config.value("use_conv_bias", bool, True),
            bias=config.value("use_bias", bool, False),
            dt_min=config.value("time_step_min", float, 1e-3, minimum=0),
            dt_max=config.value("time_step_max", float, 1e-1, minimum=0),
            dt_init_floor=config.value("time_step_floor", float, 1e-4, minimum=0),
            dt_limit=read_dt_limit(config),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> Mamba2:
        embed = reader.args("embed", "embed.token")
        mix = reader.args("blocks.0.mix", "mix.mamba2")
        if float(mix["expand"]) != int(mix["expand"]):
            raise HFExportError(
                f"{reader.where}: blocks.0.mix: expand {mix['expand']} is not a whole number, as Mamba2Config's expand is",
                HELP_LAYOUTS,
            )
        expand = int(mix["expand"])
        return cls(
            vocab=embed["vocab"],
            dim=embed["dim"],
            layers=reader.layers(),
            heads=expand * embed["dim"] // mix["headdim"],
            headdim=mix["headdim"],
            d_state=mix["d_state"],
            d_conv=mix["d_conv"],
            expand=expand,
            n_groups=mix["n_groups"],
            chunk_size=mix["chunk_size"],
            eps=reader.args("blocks.0.norm", "norm.rms")["eps"],
            tied=reader.tied(),
            conv_bias=mix["conv_bias"],
            bias=mix["bias"],
            dt_min=mix["dt_min"],
            dt_max=mix["dt_max"],
            dt_init_floor=mix["dt_init_floor"],
            dt_limit=(mix["dt_limit_min"], mix["dt_limit_max"]),
        )

    def blueprint(self) -> dict[str, Any]:
        mix = {
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "headdim": self.headdim,
            "n_groups": self.n_groups,
            "norm_eps": self.eps,
            "conv_bias": self.conv_bias,
            "bias": self.bias,
            "dt_min": self.dt_min,
            "dt_max": self.dt_max,
            "dt_init_floor": self.dt_init_floor,
            "dt_limit_min": self.dt_limit[0],
            "dt_limit_max": self.dt_limit[1],
        }
        if self.chunk_size is not None:
            mix["chunk_size"] = self.chunk_size
        doc = (
            "Mamba-2 (Hugging Face mamba2): token embedding, pre-RMSNorm residual layers of the Mamba-2 (SSD) mixer, "
            "final RMSNorm, LM head."
        )
        return self.stack(doc, mix)

    def hf_config(self) -> dict[str, Any]:
        lo, hi = self.dt_limit
        # no limit is the config's default: leave it out, so transformers 4 (which reads no tagged Infinity) loads it
        limit = {} if self.dt_limit == (0.0, None) else {"time_step_limit": [lo, INFINITY if hi is None else hi]}
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "num_heads": self.heads,
            "head_dim": self.headdim,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "n_groups": self.n_groups,
            **({} if self.chunk_size is None else {"chunk_size": self.chunk_size}),
            "layer_norm_epsilon": self.eps,
            "use_conv_bias": self.conv_bias,
            "use_bias": self.bias,
            "hidden_act": "silu",
            "residual_in_fp32": False,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            **limit,
        }
