"""Llama (transformers ``LlamaForCausalLM``) <-> blueprints/llama.yaml's layout.

Token embedding, pre-RMSNorm layers of grouped-query attention with rotary embeddings and a
gated FFN (SwiGLU), final RMSNorm, LM head (untied by default). transformers' RoPE rotates
feature i with feature i + head_dim/2 (``rotate_half``), the convention of ``mix.attention``,
so q_proj and k_proj load unpermuted; q_proj, k_proj and v_proj are stacked into ``qkv``.
Only plain RoPE maps: scaled variants (``linear``, ``dynamic``, ``yarn``, ``llama3``) change
the angles in ways ``mix.attention`` does not model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import (
    TOKEN_IDS,
    Layout,
    ModelReader,
    TensorMap,
    embed_node,
    language_model,
    lm_head_map,
    prenorm_body,
)

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu"}  # ffn.glu: SwiGLU or (erf) GEGLU
PLAIN_ROPE = (None, "default")


@dataclass(frozen=True)
class Llama(Layout):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    title = "Llama"
    signature = "mix.attention"
    prefix = "model."
    ignored = (r"\.rotary_emb\.inv_freq$",)  # the RoPE table older checkpoints saved
    carried = (*TOKEN_IDS, "max_position_embeddings")

    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int | None
    """As the run has it: null means one key/value head per query head."""
    hidden: int
    activation: str
    eps: float
    rope_base: float
    tied: bool
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def from_config(cls, config: HFConfig) -> Llama:
        dim, heads = config.value("hidden_size", int, 4096, minimum=1), config.value("num_attention_heads", int, 32, minimum=1)
        kv_heads = config.value("num_key_value_heads", int, None, minimum=1) or heads
        if dim % heads:
            raise config.fail("num_attention_heads", f"{heads} does not divide hidden_size {dim}")
        if heads % kv_heads:
            raise config.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
        head_dim = config.value("head_dim", int, None, minimum=1)
        if head_dim not in (None, dim // heads):
            raise config.fail(
                "head_dim",
                f"{head_dim} is not hidden_size / num_attention_heads = {dim // heads}",
                "mix.attention's heads split the model width evenly",
            )
        return cls(
            vocab=config.value("vocab_size", int, 32000, minimum=1),
            dim=dim,
            layers=config.value("num_hidden_layers", int, 32, minimum=1),
            heads=heads,
            kv_heads=kv_heads,
            hidden=config.value("intermediate_size", int, 11008, minimum=1),
            activation=config.choice("hidden_act", ACTIVATIONS, "silu"),
            eps=config.value("rms_norm_eps", float, 1e-6, minimum=0),
            rope_base=_rope_base(config),
            tied=config.value("tie_word_embeddings", bool, False),
            attention_bias=config.value("attention_bias", bool, False),
            mlp_bias=config.value("mlp_bias", bool, False),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> Llama:
        embed = reader.args("embed", "embed.token")
        mix = reader.args("blocks.0.mix", "mix.attention")
        ffn = reader.args("blocks.0.ffn", "ffn.glu")
        return cls(
            vocab=embed["vocab"],
            dim=embed["dim"],
            layers=reader.layers(),
            heads=mix["heads"],
            kv_heads=mix["kv_heads"],
            hidden=reader.rows("blocks.0.ffn.w_gate.weight"),
            activation=ffn["activation"],
            eps=reader.args("blocks.0.norm1", "norm.rms")["eps"],
            rope_base=mix["rope_base"],
            tied=reader.tied(),
            attention_bias=mix["bias"],
            mlp_bias=ffn["bias"],
        )

    def blueprint(self) -> dict[str, Any]:
        mix = {
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "rope": True,
            "rope_base": self.rope_base,
            "causal": True,
            "bias": self.attention_bias,
        }
        body = prenorm_body(
            "norm.rms",
            {"eps": self.eps},
            mix,
            "ffn.glu",
            {"hidden": self.hidden, "activation": self.activation, "bias": self.mlp_bias},
        )
        doc = (
            "Llama (Hugging Face llama): token embedding, pre-RMSNorm layers of GQA attention with RoPE "
            "and a gated FFN, final RMSNorm, LM head."
        )
        final = {"block": "norm.rms", "args": {"eps": self.eps}}
        return language_model(
            "llama",
            doc,
            embed_node(self.vocab, self.dim),
            body,
            layers=self.layers,
            final_norm=final,
            vocab=self.vocab,
            tied=self.tied,
        )

    def hf_config(self) -> dict[str, Any]:
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads or self.heads,
            "head_dim": self.dim // self.heads,
            "intermediate_size": self.hidden,
            "hidden_act": self.activation,
            "rms_norm_eps": self.eps,
            # transformers 5 reads rope_parameters, 4.x reads rope_theta
            "rope_theta": self.rope_base,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_base},
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
        }

    def tensor_maps(self) -> list[TensorMap]:
        t, kv_dim = self.prefix, self.dim // self.heads * (self.kv_heads or self.heads)
        maps = [TensorMap("embed.weight", (f"{t}embed_tokens.weight",))]
        for i in range(self.layers):
            ours, theirs = f"blocks.{i}", f"{t}layers.{i}"
            attn = f"{theirs}.self_attn"
            for part in ("weight", "bias") if self.attention_bias else ("weight",):
                qkv = tuple(f"{attn}.{p}_proj.{part}" for p in "qkv")
                maps += [
                    TensorMap(f"{ours}.mix.qkv.{part}", qkv, split=(self.dim, kv_dim, kv_dim)),
                    TensorMap(f"{ours}.mix.out_proj.{part}", (f"{attn}.o_proj.{part}",)),
                ]
            for part in ("weight", "bias") if self.mlp_bias else ("weight",):
                maps += [
                    TensorMap(f"{ours}.ffn.w_{p}.{part}", (f"{theirs}.mlp.{p}_proj.{part}",)) for p in ("gate", "up", "down")
                ]
            maps += [
                TensorMap(f"{ours}.norm1.weight", (f"{theirs}.input_layernorm.weight",)),
                TensorMap(f"{ours}.norm2.weight", (f"{theirs}.post_attention_layernorm.weight",)),
            ]
        return maps + [TensorMap("norm_f.weight", (f"{t}norm.weight",))] + lm_head_map(self.tied)


def _rope_base(config: HFConfig) -> float:
    """RoPE's base: ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4.x)."""
    field = "rope_parameters" if "rope_parameters" in config.data else "rope_scaling"
    params = config.value(field, dict, None) or {}
    kind = params.get("rope_type", params.get("type"))
    if kind not in PLAIN_ROPE:
        raise config.fail(
            f"{field}.rope_type",
            f"{kind!r} is not supported: mix.attention applies plain RoPE only",
            "only rope_type 'default' converts",
        )
    theta = params.get("rope_theta", config.value("rope_theta", float, 10000.0, minimum=1.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta < 1:
        raise config.fail(f"{field}.rope_theta", f"expected a number of at least 1, got {theta!r}")
    return float(theta)
