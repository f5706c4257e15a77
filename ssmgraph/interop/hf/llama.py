"""Llama (transformers ``LlamaForCausalLM``) <-> blueprints/llama.yaml's layout, and the base of the
families that share it (Mistral, Qwen2, Qwen3 in ``qwen.py``).

Token embedding, pre-RMSNorm layers of grouped-query attention with rotary embeddings and a
gated FFN (SwiGLU), final RMSNorm, LM head (untied by default). transformers' RoPE rotates
feature i with feature i + head_dim/2 (``rotate_half``), the convention of ``mix.attention``,
so q_proj and k_proj load unpermuted; q_proj, k_proj and v_proj are stacked into ``qkv``.
RoPE scalings ``linear``, ``llama3`` and ``yarn`` map onto ``mix.attention``'s ``rope_*``
arguments (``rope.py``); ``dynamic`` is refused there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ssmgraph.graph.model import CompiledModel
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
from ssmgraph.interop.hf.rope import read_rope, rope_args, rope_config

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu"}  # ffn.glu: SwiGLU or (erf) GEGLU


@dataclass(frozen=True)
class Llama(Layout):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    title = "Llama"
    signature = "mix.attention"
    prefix = "model."
    ignored = (r"\.rotary_emb\.inv_freq$",)  # the RoPE table older checkpoints saved
    carried = (*TOKEN_IDS, "max_position_embeddings")
    max_len: ClassVar[int] = 2048
    """The config class's default max_position_embeddings (the default original context of a scaled RoPE)."""
    head_dim_default: ClassVar[int | None] = None
    """The config class's default head_dim (null: hidden_size / num_attention_heads)."""
    activations: ClassVar[dict[str, str]] = ACTIVATIONS
    """config.json's ``hidden_act`` values -> ``ffn.glu`` ``activation``."""
    activation_field: ClassVar[str] = "hidden_act"
    """The config.json field transformers reads the activation from (Gemma 2: ``hidden_activation``)."""
    tied_default: ClassVar[bool] = False

    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int | None
    """As the run has it: null means one key/value head per query head."""
    head_dim: int | None
    """As the run has it: null means dim / heads."""
    hidden: int
    activation: str
    eps: float
    rope: dict[str, Any]
    """mix.attention's ``rope*`` arguments."""
    tied: bool
    bias: bool
    """Biases of q, k, v (and of o, unless ``out_bias`` says otherwise)."""
    mlp_bias: bool = False
    out_bias: bool | None = None
    window: int | None = None
    qk_norm: bool = False

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        mix = mix_args(model)
        plain = not mix.get("qk_norm") and mix.get("window") is None and out_bias(mix) == mix.get("bias", False)
        return plain and plain_rms(model)

    @classmethod
    def from_config(cls, config: HFConfig) -> Llama:
        bias = config.value("attention_bias", bool, False)
        return cls.read(config, bias=bias, mlp_bias=config.value("mlp_bias", bool, False))

    @classmethod
    def read(cls, config: HFConfig, **family: Any) -> Llama:
        """The fields every family of this layout has; ``family`` gives the others (biases, window, qk_norm)."""
        dim, heads = config.value("hidden_size", int, 4096, minimum=1), config.value("num_attention_heads", int, 32, minimum=1)
        kv_heads = config.value("num_key_value_heads", int, None, minimum=1) or heads
        head_dim = config.value("head_dim", int, cls.head_dim_default, minimum=1)
        if head_dim is None and dim % heads:
            raise config.fail("num_attention_heads", f"{heads} does not divide hidden_size {dim}")
        if heads % kv_heads:
            raise config.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
        max_len = config.value("max_position_embeddings", int, cls.max_len, minimum=1)
        return cls(
            vocab=config.value("vocab_size", int, 32000, minimum=1),
            dim=dim,
            layers=config.value("num_hidden_layers", int, 32, minimum=1),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=None if head_dim is None or (not dim % heads and head_dim == dim // heads) else head_dim,
            hidden=config.value("intermediate_size", int, 11008, minimum=1),
            activation=config.choice(cls.activation_field, cls.activations, next(iter(cls.activations))),
            eps=config.value("rms_norm_eps", float, 1e-6, minimum=0),
            rope=read_rope(config, max_len),
            tied=config.value("tie_word_embeddings", bool, cls.tied_default),
            **family,
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
            head_dim=mix["head_dim"],
            hidden=reader.rows("blocks.0.ffn.w_gate.weight"),
            activation=ffn["activation"],
            eps=reader.args("blocks.0.norm1", "norm.rms")["eps"],
            rope=rope_args(mix),
            tied=reader.tied(),
            **cls.features(mix, ffn),
        )

    @classmethod
    def features(cls, mix: dict[str, Any], ffn: dict[str, Any]) -> dict[str, Any]:
        """The fields a saved model sets for this family: those the family can vary are read, the
        others fixed to the family's values, so the structure check names any difference."""
        return {"bias": mix["bias"], "mlp_bias": ffn["bias"]}

    @property
    def dims(self) -> tuple[int, int]:
        """Rows of the query and of the key (or value) projection."""
        head_dim = self.head_dim or self.dim // self.heads
        return self.heads * head_dim, (self.kv_heads or self.heads) * head_dim

    def blueprint(self) -> dict[str, Any]:
        mix = {"heads": self.heads, "kv_heads": self.kv_heads, **self.rope, "causal": True, "bias": self.bias}
        optional = {"head_dim": self.head_dim, "out_bias": self.out_bias, "window": self.window}
        mix.update({k: v for k, v in optional.items() if v is not None})
        if self.qk_norm:
            mix.update(qk_norm=True, qk_norm_eps=self.eps)
        body = prenorm_body(
            "norm.rms",
            self.norm_args(),
            mix,
            "ffn.glu",
            {"hidden": self.hidden, "activation": self.activation, "bias": self.mlp_bias},
        )
        doc = (
            f"{self.title} (Hugging Face {self.model_type}): token embedding, pre-RMSNorm layers of GQA attention "
            "with RoPE and a gated FFN, final RMSNorm, LM head."
        )
        final = {"block": "norm.rms", "args": self.norm_args()}
        first = self.first_nodes()
        return language_model(
            self.model_type, doc, first, body, layers=self.layers, final_norm=final, vocab=self.vocab, tied=self.tied
        )

    def norm_args(self) -> dict[str, Any]:
        """The ``norm.rms`` arguments of every norm of the model."""
        return {"eps": self.eps}

    def first_nodes(self) -> dict[str, Any]:
        """The nodes before the layers (the token embedding)."""
        return embed_node(self.vocab, self.dim)

    def hf_config(self) -> dict[str, Any]:
        rope = rope_config(self.rope)
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads or self.heads,
            "head_dim": self.head_dim or self.dim // self.heads,
            "intermediate_size": self.hidden,
            "hidden_act": self.activation,
            "rms_norm_eps": self.eps,
            # transformers 5 reads rope_parameters, 4.x reads rope_theta (and rope_scaling when scaled)
            "rope_theta": self.rope["rope_base"],
            "rope_parameters": rope,
            **({"rope_scaling": rope} if rope["rope_type"] != "default" else {}),
            **self.family_config(),
        }

    def family_config(self) -> dict[str, Any]:
        """The config.json fields of this family only."""
        return {"attention_bias": self.bias, "mlp_bias": self.mlp_bias}

    def tensor_maps(self) -> list[TensorMap]:
        t, (q_dim, kv_dim) = self.prefix, self.dims
        with_out_bias = self.bias if self.out_bias is None else self.out_bias
        maps = [TensorMap("embed.weight", (f"{t}embed_tokens.weight",))]
        for i in range(self.layers):
            ours, theirs = f"blocks.{i}", f"{t}layers.{i}"
            attn = f"{theirs}.self_attn"
            for part in ("weight", "bias") if self.bias else ("weight",):
                qkv = tuple(f"{attn}.{p}_proj.{part}" for p in "qkv")
                maps.append(TensorMap(f"{ours}.mix.qkv.{part}", qkv, split=(q_dim, kv_dim, kv_dim)))
            for part in ("weight", "bias") if with_out_bias else ("weight",):
                maps.append(TensorMap(f"{ours}.mix.out_proj.{part}", (f"{attn}.o_proj.{part}",)))
            if self.qk_norm:
                maps += [TensorMap(f"{ours}.mix.{n}.weight", (f"{attn}.{n}.weight",)) for n in ("q_norm", "k_norm")]
            for part in ("weight", "bias") if self.mlp_bias else ("weight",):
                maps += [
                    TensorMap(f"{ours}.ffn.w_{p}.{part}", (f"{theirs}.mlp.{p}_proj.{part}",)) for p in ("gate", "up", "down")
                ]
            maps += [
                TensorMap(f"{ours}.norm1.weight", (f"{theirs}.input_layernorm.weight",)),
                TensorMap(f"{ours}.norm2.weight", (f"{theirs}.post_attention_layernorm.weight",)),
            ]
        return maps + [TensorMap("norm_f.weight", (f"{t}norm.weight",))] + lm_head_map(self.tied)


def mix_args(model: CompiledModel) -> dict[str, Any]:
    """The first layer's attention arguments ({} when there is none: the structure check reports it)."""
    info = model.nodes.get("blocks.0.mix")
    return dict(info.args) if info is not None and info.block == "mix.attention" else {}


def out_bias(mix: dict[str, Any]) -> bool:
    """Whether out_proj has a bias (``out_bias`` null: as ``bias``)."""
    return mix.get("bias", False) if mix.get("out_bias") is None else mix["out_bias"]


def unbiased_rms(model: CompiledModel) -> bool:
    """RMSNorm without offset and attention without qk-norm or biases: Mistral's and Phi-3's layers (windowed or not)."""
    mix = mix_args(model)
    return plain_rms(model) and not mix.get("qk_norm") and not mix.get("bias") and not out_bias(mix)


def plain_rms(model: CompiledModel) -> bool:
    """Whether the first layer norm is ``norm.rms`` without offset (every Llama-layout family but Gemma; GPT-NeoX
    has ``norm.layer``)."""
    info = model.nodes.get("blocks.0.norm1")
    return info is not None and info.block == "norm.rms" and not norm_offset(model)


def norm_offset(model: CompiledModel, path: str = "blocks.0.norm1") -> float:
    """The first layer norm's ``offset`` (Gemma: 1; every other Llama-layout family: 0)."""
    info = model.nodes.get(path)
    return float(info.args.get("offset", 0.0)) if info is not None and info.block == "norm.rms" else 0.0
