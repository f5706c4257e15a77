"""Mamba (transformers ``MambaForCausalLM``) <-> blueprints/mamba.yaml's layout.

Token embedding, pre-RMSNorm residual layers of the Mamba mixer (no FFN), final RMSNorm,
LM head tied to the embedding by default. ``MambaMixer`` and ``mix.mamba`` both follow
state-spaces/mamba, so the mixer's tensors (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj) keep their names and shapes. The ``time_step_*`` fields are dt_proj's
initialisation (``dt_*`` arguments), kept so that a round trip loses nothing.

``residual_in_fp32`` keeps transformers' residual stream in fp32 when the model runs in
half precision; ssmgraph's residual adds run in the model's dtype, so in fp32 the two agree
exactly and in bf16/fp16 they round differently. Exports write ``residual_in_fp32: false``,
which is what ssmgraph computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import HELP_LAYOUTS, Layout, ModelReader, TensorMap, embed_node, language_model, lm_head_map

MIXER_TENSORS = (
    "in_proj.weight",
    "conv1d.weight",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
)


class MixerStack(Layout):
    """Mamba's and Mamba-2's layout: token embedding, pre-RMSNorm residual layers of the mixer
    (the ``signature`` block, whose tensors keep their Hugging Face names), final RMSNorm, LM head."""

    mixer_tensors: ClassVar[tuple[str, ...]]
    """The mixer's tensors without the optional biases."""
    vocab: int
    dim: int
    layers: int
    eps: float
    tied: bool
    conv_bias: bool
    bias: bool

    def stack(self, doc: str, mix: dict[str, Any]) -> dict[str, Any]:
        """The blueprint of layers of the mixer built with ``mix``."""
        body = {
            "inputs": ["x"],
            "nodes": {
                "norm": {"block": "norm.rms", "in": "x", "args": {"eps": self.eps}},
                "mix": {"block": self.signature, "in": "norm", "args": mix},
                "out": {"block": "struct.add", "in": ["x", "mix"]},
            },
            "outputs": {"x": "out"},
        }
        final = {"block": "norm.rms", "args": {"eps": self.eps}}
        return language_model(
            self.model_type,
            doc,
            embed_node(self.vocab, self.dim),
            body,
            layers=self.layers,
            final_norm=final,
            vocab=self.vocab,
            tied=self.tied,
        )

    def tensor_maps(self) -> list[TensorMap]:
        t = self.prefix
        names = self.mixer_tensors + ("conv1d.bias",) * self.conv_bias + ("in_proj.bias", "out_proj.bias") * self.bias
        maps = [TensorMap("embed.weight", (f"{t}embeddings.weight",))]
        for i in range(self.layers):
            maps.append(TensorMap(f"blocks.{i}.norm.weight", (f"{t}layers.{i}.norm.weight",)))
            maps += [TensorMap(f"blocks.{i}.mix.{n}", (f"{t}layers.{i}.mixer.{n}",)) for n in names]
        return maps + [TensorMap("norm_f.weight", (f"{t}norm_f.weight",))] + lm_head_map(self.tied)


@dataclass(frozen=True)
class Mamba(MixerStack):
    model_type = "mamba"
    architecture = "MambaForCausalLM"
    title = "Mamba"
    signature = "mix.mamba"
    prefix = "backbone."
    mixer_tensors = MIXER_TENSORS

    vocab: int
    dim: int
    layers: int
    d_state: int
    d_conv: int
    expand: int
    dt_rank: int
    eps: float
    tied: bool
    conv_bias: bool
    bias: bool
    dt_min: float
    dt_max: float
    dt_init: str
    dt_scale: float
    dt_init_floor: float

    @classmethod
    def from_config(cls, config: HFConfig) -> Mamba:
        dim = config.value("hidden_size", int, 768, minimum=1)
        rank = config.data.get("time_step_rank", "auto")
        if rank != "auto" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise config.fail("time_step_rank", f"expected 'auto' or a positive int, got {rank!r}")
        config.expect("hidden_act", "silu", "silu", "mix.mamba gates with SiLU")
        return cls(
            vocab=config.value("vocab_size", int, 50280, minimum=1),
            dim=dim,
            layers=config.value("num_hidden_layers", int, 32, minimum=1),
            d_state=config.value("state_size", int, 16, minimum=1),
            d_conv=config.value("conv_kernel", int, 4, minimum=1),
            expand=config.value("expand", int, 2, minimum=1),
            dt_rank=-(-dim // 16) if rank == "auto" else rank,
            eps=config.value("layer_norm_epsilon", float, 1e-5, minimum=0),
            tied=config.value("tie_word_embeddings", bool, True),
            conv_bias=config.value("use_conv_bias", bool, True),
            bias=config.value("use_bias", bool, False),
            dt_min=config.value("time_step_min", float, 1e-3, minimum=0),
            dt_max=config.value("time_step_max", float, 1e-1, minimum=0),
            dt_init=config.choice("time_step_init_scheme", {"random": "random", "constant": "constant"}, "random"),
            dt_scale=config.value("time_step_scale", float, 1.0, minimum=0),
            dt_init_floor=config.value("time_step_floor", float, 1e-4, minimum=0),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> Mamba:
        embed = reader.args("embed", "embed.token")
        mix = reader.args("blocks.0.mix", "mix.mamba")
        if float(mix["expand"]) != int(mix["expand"]):
            raise HFExportError(
                f"{reader.where}: blocks.0.mix: expand {mix['expand']} is not a whole number, as MambaConfig's expand is",
                HELP_LAYOUTS,
            )
        return cls(
            vocab=embed["vocab"],
            dim=embed["dim"],
            layers=reader.layers(),
            d_state=mix["d_state"],
            d_conv=mix["d_conv"],
            expand=int(mix["expand"]),
            dt_rank=reader.model.get_submodule("blocks.0.mix").dt_rank,
            eps=reader.args("blocks.0.norm", "norm.rms")["eps"],
            tied=reader.tied(),
            conv_bias=mix["conv_bias"],
            bias=mix["bias"],
            **{k: mix[k] for k in ("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor")},
        )

    def blueprint(self) -> dict[str, Any]:
        mix = {
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "dt_rank": self.dt_rank,
            "conv_bias": self.conv_bias,
            "bias": self.bias,
            **{k: getattr(self, k) for k in ("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor")},
        }
        doc = (
            "Mamba (Hugging Face mamba): token embedding, pre-RMSNorm residual layers of the Mamba mixer, final RMSNorm, LM head."
        )
        return self.stack(doc, mix)

    def hf_config(self) -> dict[str, Any]:
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "intermediate_size": self.expand * self.dim,
            "time_step_rank": self.dt_rank,
            "layer_norm_epsilon": self.eps,
            "use_conv_bias": self.conv_bias,
            "use_bias": self.bias,
            "hidden_act": "silu",
            "residual_in_fp32": False,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_init_scheme": self.dt_init,
            "time_step_scale": self.dt_scale,
            "time_step_floor": self.dt_init_floor,
        }
