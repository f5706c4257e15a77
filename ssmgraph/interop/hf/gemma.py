"""Gemma (transformers ``GemmaForCausalLM``): Llama's layout with three differences.

* RMSNorm multiplies by ``1 + weight`` in fp32 before the cast (``norm.rms`` ``offset: 1``;
  the stored weight is Gemma's, centred on 0).
* The token embedding is multiplied by sqrt(hidden_size) (``embed.token`` ``scale``), rounded
  to the weight's dtype; the tied LM head reads the unscaled table.
* The gated FFN uses GELU with the tanh approximation (``ffn.glu`` ``activation: gelu_tanh``):
  ``hidden_act`` ``gelu_pytorch_tanh``, and ``gelu`` / ``gelu_new`` too, which transformers
  reads as the tanh approximation for Gemma.

``head_dim`` is 256 unless config.json says otherwise; ``attention_bias`` covers q, k, v and
o; the head is tied unless ``tie_word_embeddings: false``. ``use_bidirectional_attention:
true`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import embed_node
from ssmgraph.interop.hf.llama import Llama, norm_offset

GELU_TANH = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass(frozen=True)
class Gemma(Llama):
    model_type = "gemma"
    architecture = "GemmaForCausalLM"
    title = "Gemma"
    max_len = 8192
    head_dim_default = 256
    activations = GELU_TANH
    tied_default = True

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        return norm_offset(model) == 1.0 and "blocks.0.mix_norm" not in model.nodes  # Gemma 2 has sandwich norms

    @classmethod
    def from_config(cls, config: HFConfig) -> Gemma:
        if config.value("use_bidirectional_attention", bool, None):
            raise config.fail("use_bidirectional_attention", "true is not supported", "ssmgraph converts causal Gemma models")
        if config.data.get("hidden_activation") is not None:  # 4.x reads it (null: the tanh GELU), 5.x hidden_act
            config.choice("hidden_activation", GELU_TANH, "gelu_pytorch_tanh")
        return cls.read(config, bias=config.value("attention_bias", bool, False))

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        return {"bias": mix["bias"]}

    def norm_args(self) -> dict[str, Any]:
        return {"eps": self.eps, "offset": 1.0}

    def first_nodes(self) -> dict[str, Any]:
        return embed_node(self.vocab, self.dim, scale=self.dim**0.5)

    def hf_config(self) -> dict[str, Any]:
        return {**super().hf_config(), "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"}

    def family_config(self) -> dict[str, Any]:
        return {"attention_bias": self.bias}
