"""Phi-3 (transformers ``Phi3ForCausalLM``): Llama's layout, with fused projections in the checkpoint.

* ``self_attn.qkv_proj`` is one tensor whose rows are q, k, v — exactly ``mix.qkv``, so it maps
  whole (and a merge, like mergekit, treats it as one tensor).
* ``mlp.gate_up_proj`` is one tensor whose rows are the gate's, then the up projection's
  (``chunk(2)``): ``ffn.glu``'s ``w_gate`` and ``w_up``, stacked back on export.

No biases; ``sliding_window`` (null: none) is ``mix.attention`` ``window``; the head is untied
unless ``tie_word_embeddings: true``. ``partial_rotary_factor`` other than 1 and ``longrope``
(Phi-3's long-context RoPE) are refused (E601), as for every family (``rope.py``). Phi-3 has
Llama's blueprint, so export writes Phi-3 only for a model imported from Phi-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import TensorMap, lm_head_map
from ssmgraph.interop.hf.llama import Llama, unbiased_rms


@dataclass(frozen=True)
class Phi3(Llama):
    model_type = "phi3"
    architecture = "Phi3ForCausalLM"
    title = "Phi-3"
    max_len = 4096

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        return unbiased_rms(model)

    @classmethod
    def from_config(cls, config: HFConfig) -> Phi3:
        layout = cls.read(config, bias=False, window=config.value("sliding_window", int, None, minimum=1))
        if layout.head_dim is not None:  # Phi-3 rotates hidden_size / heads features of each head
            raise config.fail(
                "head_dim", f"{layout.head_dim} is not hidden_size / num_attention_heads", "only the default converts"
            )
        return layout

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        return {"bias": False, "window": mix["window"]}

    def hf_config(self) -> dict[str, Any]:
        config = super().hf_config()
        config.pop("head_dim")  # Phi-3 computes it as hidden_size / heads
        return config

    def family_config(self) -> dict[str, Any]:
        return {"sliding_window": self.window}

    def tensor_maps(self) -> list[TensorMap]:
        t, h = self.prefix, self.hidden
        maps = [TensorMap("embed.weight", (f"{t}embed_tokens.weight",))]
        for i in range(self.layers):
            ours, theirs = f"blocks.{i}", f"{t}layers.{i}"
            maps += [
                TensorMap(f"{ours}.mix.qkv.weight", (f"{theirs}.self_attn.qkv_proj.weight",)),
                TensorMap(f"{ours}.mix.out_proj.weight", (f"{theirs}.self_attn.o_proj.weight",)),
                TensorMap(f"{ours}.ffn.w_gate.weight", (f"{theirs}.mlp.gate_up_proj.weight",), rows=(0, h, 2 * h)),
                TensorMap(f"{ours}.ffn.w_up.weight", (f"{theirs}.mlp.gate_up_proj.weight",), rows=(h, 2 * h, 2 * h)),
                TensorMap(f"{ours}.ffn.w_down.weight", (f"{theirs}.mlp.down_proj.weight",)),
                TensorMap(f"{ours}.norm1.weight", (f"{theirs}.input_layernorm.weight",)),
                TensorMap(f"{ours}.norm2.weight", (f"{theirs}.post_attention_layernorm.weight",)),
            ]
        return maps + [TensorMap("norm_f.weight", (f"{t}norm.weight",))] + lm_head_map(self.tied)
