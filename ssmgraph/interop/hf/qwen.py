"""Mistral, Qwen2 and Qwen3: Llama's layout with one or two attention features more.

* Mistral (``MistralForCausalLM``): no biases; ``sliding_window`` W limits every layer's
  attention to the last W tokens (``mix.attention`` ``window``; null = plain causal).
* Qwen2 (``Qwen2ForCausalLM``): biases on q, k, v but not on o (``bias: true``, ``out_bias: false``).
* Qwen3 (``Qwen3ForCausalLM``): per-head RMSNorm of queries and keys before RoPE (``qk_norm``,
  with the model's ``rms_norm_eps``), ``head_dim`` 128 unless config.json says otherwise,
  ``attention_bias`` on all four projections.

Qwen's sliding-window layers (``use_sliding_window: true``, the layers from
``max_window_layers`` on) are refused. Export tells the families apart by these features; a
model without any (a Mistral without window) exports as the family it was imported from
(meta.json), else as Llama.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.llama import Llama, mix_args, out_bias, plain_rms, unbiased_rms


@dataclass(frozen=True)
class Mistral(Llama):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    title = "Mistral"
    max_len = 131072

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        return unbiased_rms(model)

    @classmethod
    def from_config(cls, config: HFConfig) -> Mistral:
        window = config.value("sliding_window", int, None, minimum=1) if "sliding_window" in config.data else 4096
        return cls.read(config, bias=False, window=window)

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        return {"bias": False, "window": mix["window"]}

    def family_config(self) -> dict[str, Any]:
        return {"sliding_window": self.window}


@dataclass(frozen=True)
class Qwen2(Llama):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    title = "Qwen2"
    max_len = 32768

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        mix = mix_args(model)
        return (
            plain_rms(model)
            and not mix.get("qk_norm")
            and mix.get("window") is None
            and bool(mix.get("bias"))
            and not out_bias(mix)
        )

    @classmethod
    def from_config(cls, config: HFConfig) -> Qwen2:
        full_attention(config)
        return cls.read(config, bias=True, out_bias=False)

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        return {"bias": True, "out_bias": False}

    def family_config(self) -> dict[str, Any]:
        return {"use_sliding_window": False, "sliding_window": None}


@dataclass(frozen=True)
class Qwen3(Llama):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    title = "Qwen3"
    max_len = 32768
    head_dim_default = 128

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        mix = mix_args(model)
        return plain_rms(model) and bool(mix.get("qk_norm")) and mix.get("window") is None and out_bias(mix) == mix.get("bias")

    @classmethod
    def from_config(cls, config: HFConfig) -> Qwen3:
        full_attention(config)
        return cls.read(config, bias=config.value("attention_bias", bool, False), qk_norm=True)

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        return {"bias": mix["bias"], "qk_norm": True}

    def family_config(self) -> dict[str, Any]:
        return {"attention_bias": self.bias, "use_sliding_window": False, "sliding_window": None}


def full_attention(config: HFConfig) -> None:
    """Refuse Qwen's sliding-window layers: ssmgraph converts Qwen models whose layers all attend fully."""
    help = "ssmgraph converts Qwen models whose layers all use full attention (use_sliding_window: false)"
    if config.value("use_sliding_window", bool, False):
        raise config.fail("use_sliding_window", "true is not supported: the layers from max_window_layers on use a window", help)
    types = config.data.get("layer_types")
    if types is not None and (not isinstance(types, list) or any(t != "full_attention" for t in types)):
        raise config.fail("layer_types", "layers other than 'full_attention' are not supported", help)
