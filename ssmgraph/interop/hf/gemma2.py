"""Gemma 2 (transformers ``Gemma2ForCausalLM``): Gemma's layout (``gemma.py``) with four differences.

* Each layer normalises the attention's and the FFN's outputs too (sandwich norms):
  x + post_attention_layernorm(attn(input_layernorm(x))), then
  h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h))) — nodes ``mix_norm`` and
  ``ffn_norm`` around ``norm1``/``mix`` and ``norm2``/``ffn``; every norm is Gemma's (1 + weight).
* Attention scores are scaled by ``query_pre_attn_scalar``^-½ (``mix.attention`` ``scale``) and
  soft-capped at ``attn_logit_softcapping`` (``softcap``); the logits at ``final_logit_softcapping``
  (``head.lm`` ``softcap``). Either cap may be null (none).
* ``layer_types`` (default: sliding, full, sliding, ...) gives the ``sliding_attention`` layers a
  ``window`` of ``sliding_window`` tokens (an ``at:`` override of the stack); the others attend fully.
* The activation is read from ``hidden_activation``, which transformers' Gemma 2 reads (``gelu`` is
  the exact GELU there, unlike Gemma 1's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.gemma import Gemma
from ssmgraph.interop.hf.layout import ModelReader, TensorMap, language_model
from ssmgraph.interop.hf.llama import norm_offset

ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
LAYER_TYPES = ("sliding_attention", "full_attention")


@dataclass(frozen=True)
class Gemma2(Gemma):
    model_type = "gemma2"
    architecture = "Gemma2ForCausalLM"
    title = "Gemma 2"
    activations = ACTIVATIONS
    activation_field = "hidden_activation"

    sliding: tuple[int, ...] = ()
    """The layers that attend within ``window``."""
    scale: float | None = None
    attn_cap: float | None = None
    final_cap: float | None = None

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        return norm_offset(model) == 1.0 and "blocks.0.mix_norm" in model.nodes

    @classmethod
    def from_config(cls, config: HFConfig) -> Gemma2:
        if config.value("use_bidirectional_attention", bool, None):
            raise config.fail("use_bidirectional_attention", "true is not supported", "ssmgraph converts causal Gemma models")
        layers = config.value("num_hidden_layers", int, 26, minimum=1)
        window = config.value("sliding_window", int, None, minimum=1) if "sliding_window" in config.data else 4096
        types = config.data.get("layer_types")
        if types is None:
            types = [LAYER_TYPES[i % 2] for i in range(layers)]
        if not isinstance(types, list) or len(types) != layers or any(t not in LAYER_TYPES for t in types):
            raise config.fail(
                "layer_types",
                f"expected a list of {layers} entries 'sliding_attention' or 'full_attention', got {types!r}",
                "one entry per layer (num_hidden_layers)",
            )
        scalar = config.value("query_pre_attn_scalar", float, 256.0, minimum=0)
        if scalar <= 0:
            raise config.fail("query_pre_attn_scalar", f"must be above 0, got {scalar!r}")
        base = cls.read(config, bias=config.value("attention_bias", bool, False), window=window)
        return replace(
            base,
            sliding=tuple(i for i, t in enumerate(types) if t == "sliding_attention") if window is not None else (),
            scale=scalar**-0.5,  # as transformers' config.query_pre_attn_scalar**-0.5
            attn_cap=_cap(config, "attn_logit_softcapping", 50.0),
            final_cap=_cap(config, "final_logit_softcapping", 30.0),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> Gemma2:
        base = super().from_model(reader)
        windows = [reader.args(f"blocks.{i}.mix", "mix.attention").get("window") for i in range(base.layers)]
        mix = reader.args("blocks.0.mix", "mix.attention")
        return replace(
            base,
            window=next((w for w in windows if w is not None), None),
            sliding=tuple(i for i, w in enumerate(windows) if w is not None),
            scale=mix.get("scale"),
            attn_cap=mix.get("softcap"),
            final_cap=reader.args("head", "head.lm").get("softcap"),
        )

    def blueprint(self) -> dict[str, Any]:
        norm = {"block": "norm.rms", "args": self.norm_args()}
        mix = {"heads": self.heads, "kv_heads": self.kv_heads, **self.rope, "causal": True, "bias": self.bias}
        optional = {"head_dim": self.head_dim, "scale": self.scale, "softcap": self.attn_cap}
        mix.update({k: v for k, v in optional.items() if v is not None})
        ffn = {"hidden": self.hidden, "activation": self.activation, "bias": False}
        body = {
            "inputs": ["x"],
            "nodes": {
                "norm1": {**norm, "in": "x"},
                "mix": {"block": "mix.attention", "in": "norm1", "args": mix},
                "mix_norm": {**norm, "in": "mix"},
                "res1": {"block": "struct.add", "in": ["x", "mix_norm"]},
                "norm2": {**norm, "in": "res1"},
                "ffn": {"block": "ffn.glu", "in": "norm2", "args": ffn},
                "ffn_norm": {**norm, "in": "ffn"},
                "out": {"block": "struct.add", "in": ["res1", "ffn_norm"]},
            },
            "outputs": {"x": "out"},
        }
        doc = (
            "Gemma 2 (Hugging Face gemma2): scaled token embedding, layers of GQA attention with RoPE and soft-capped "
            "scores (sliding-window and global) and a GELU-gated FFN, each between two (1 + weight) RMSNorms, "
            "final RMSNorm, soft-capped LM head."
        )
        doc = language_model(
            self.model_type, doc, self.first_nodes(), body, layers=self.layers, final_norm=norm, vocab=self.vocab, tied=self.tied
        )
        if self.sliding:
            at = ",".join(map(str, self.sliding))
            doc["nodes"]["blocks"]["at"] = {at: {"nodes": {"mix": {"args": {"window": self.window}}}}}
        if self.final_cap is not None:
            doc["nodes"]["head"]["args"]["softcap"] = self.final_cap
        return doc

    def hf_config(self) -> dict[str, Any]:
        activation = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[self.activation]
        head_dim = self.head_dim or self.dim // self.heads
        scalar = head_dim if self.scale is None else self.scale**-2
        whole = round(scalar)
        return {
            **super().hf_config(),
            "hidden_act": activation,
            "hidden_activation": activation,
            "query_pre_attn_scalar": whole if whole > 0 and whole**-0.5 == (self.scale or head_dim**-0.5) else scalar,
            "sliding_window": self.window,
            "layer_types": [LAYER_TYPES[0] if i in self.sliding else LAYER_TYPES[1] for i in range(self.layers)],
            "attn_logit_softcapping": self.attn_cap,
            "final_logit_softcapping": self.final_cap,
        }

    def tensor_maps(self) -> list[TensorMap]:
        maps = []
        for m in super().tensor_maps():
            if m.ssm.endswith(".norm2.weight"):  # Gemma 2's post_attention_layernorm is mix_norm; norm2 is the pre-FFN norm
                layer = m.hf[0].removesuffix("post_attention_layernorm.weight")
                ours = m.ssm.removesuffix("norm2.weight")
                maps += [
                    TensorMap(f"{ours}mix_norm.weight", m.hf),
                    TensorMap(m.ssm, (f"{layer}pre_feedforward_layernorm.weight",)),
                    TensorMap(f"{ours}ffn_norm.weight", (f"{layer}post_feedforward_layernorm.weight",)),
                ]
            else:
                maps.append(m)
        return maps


def _cap(config: HFConfig, field: str, default: float) -> float | None:
    """A soft-cap field: null means none; a cap must be above 0."""
    if field in config.data and config.data[field] is None:
        return None
    value = config.value(field, float, default, minimum=0)
    if value <= 0:
        raise config.fail(field, f"must be above 0 (or null: no cap), got {value!r}")
    return value
