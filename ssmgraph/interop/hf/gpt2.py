"""GPT-2 (transformers ``GPT2LMHeadModel``) <-> blueprints/gpt.yaml's layout.

Token + learned position embedding, pre-LayerNorm layers of attention (fused ``c_attn``, the
q, k, v order of ``mix.attention``'s ``qkv``) and an MLP, final LayerNorm, LM head tied to the
embedding by default. GPT-2's ``Conv1D`` stores its weight as (in, out), the transpose of
``nn.Linear``'s. ``gelu_new`` is the tanh approximation of GELU (``ffn.mlp`` activation
``gelu_tanh``). GPT-2 always has biases; a model without them (gpt.yaml's attention) exports
with zero biases, which computes the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.layout import Layout, ModelReader, TensorMap, embed_node, language_model, lm_head_map, prenorm_body

# transformers ACT2FN name -> ffn.mlp activation; "gelu" is the exact (erf) GELU in both.
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
EXPORT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}  # every ffn.mlp choice


@dataclass(frozen=True)
class GPT2(Layout):
    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    title = "GPT-2"
    signature = "embed.position"
    prefix = "transformer."
    ignored = (r"\.attn\.(masked_)?bias$",)  # the causal-mask buffers older checkpoints saved

    vocab: int
    dim: int
    layers: int
    heads: int
    max_len: int
    inner: int
    activation: str
    eps: float
    tied: bool
    attention_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True

    @classmethod
    def from_config(cls, config: HFConfig) -> GPT2:
        dim, heads = config.value("n_embd", int, 768, minimum=1), config.value("n_head", int, 12, minimum=1)
        if dim % heads:
            raise config.fail("n_head", f"{heads} does not divide n_embd {dim}")
        config.expect("add_cross_attention", False, False, "mix.attention has no cross-attention to encoder states")
        config.expect("scale_attn_weights", True, True, "mix.attention always scales scores by 1/sqrt(head_dim)")
        config.expect("scale_attn_by_inverse_layer_idx", False, False, "mix.attention has no per-layer score scale")
        return cls(
            vocab=config.value("vocab_size", int, 50257, minimum=1),
            dim=dim,
            layers=config.value("n_layer", int, 12, minimum=1),
            heads=heads,
            max_len=config.value("n_positions", int, 1024, minimum=1),
            inner=config.value("n_inner", int, None, minimum=1) or 4 * dim,
            activation=config.choice("activation_function", ACTIVATIONS, "gelu_new"),
            eps=config.value("layer_norm_epsilon", float, 1e-5, minimum=0),
            tied=config.value("tie_word_embeddings", bool, True),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> GPT2:
        embed = reader.args("embed", "embed.token")
        mix = reader.args("blocks.0.mix", "mix.attention")
        norm = reader.args("blocks.0.norm1", "norm.layer")
        ffn = reader.args("blocks.0.ffn", "ffn.mlp")
        return cls(
            vocab=embed["vocab"],
            dim=embed["dim"],
            layers=reader.layers(),
            heads=mix["heads"],
            max_len=reader.args("pos", "embed.position")["max_len"],
            inner=reader.rows("blocks.0.ffn.fc1.weight"),
            activation=ffn["activation"],
            eps=norm["eps"],
            tied=reader.tied(),
            attention_bias=mix["bias"],
            mlp_bias=ffn["bias"],
            norm_bias=norm["bias"],
        )

    def blueprint(self) -> dict[str, Any]:
        norm_args = {"eps": self.eps, "bias": self.norm_bias}
        first = {
            **embed_node(self.vocab, self.dim),
            "pos": {
                "block": "embed.position",
                "in": "tokens",
                "args": {"max_len": self.max_len, "dim": self.dim, "kind": "learned"},
            },
            "x0": {"block": "struct.add", "in": ["embed", "pos"]},
        }
        body = prenorm_body(
            "norm.layer",
            norm_args,
            {"heads": self.heads, "causal": True, "bias": self.attention_bias},
            "ffn.mlp",
            {"hidden": self.inner, "activation": self.activation, "bias": self.mlp_bias},
        )
        doc = (
            "GPT-2 (Hugging Face gpt2): token + learned position embedding, pre-LayerNorm attention/MLP layers, "
            "final LayerNorm, LM head."
        )
        final = {"block": "norm.layer", "args": norm_args}
        return language_model("gpt2", doc, first, body, layers=self.layers, final_norm=final, vocab=self.vocab, tied=self.tied)

    def hf_config(self) -> dict[str, Any]:
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "n_embd": self.dim,
            "n_layer": self.layers,
            "n_head": self.heads,
            "n_positions": self.max_len,
            "n_inner": self.inner,
            "activation_function": EXPORT_ACTIVATIONS[self.activation],
            "layer_norm_epsilon": self.eps,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
        }

    def tensor_maps(self) -> list[TensorMap]:
        t = self.prefix
        maps = [TensorMap("embed.weight", (f"{t}wte.weight",)), TensorMap("pos.weight", (f"{t}wpe.weight",))]
        for i in range(self.layers):
            ours, theirs = f"blocks.{i}", f"{t}h.{i}"
            maps += _norm(f"{ours}.norm1", f"{theirs}.ln_1")
            maps += _conv1d(f"{ours}.mix.qkv", f"{theirs}.attn.c_attn")
            maps += _conv1d(f"{ours}.mix.out_proj", f"{theirs}.attn.c_proj")
            maps += _norm(f"{ours}.norm2", f"{theirs}.ln_2")
            maps += _conv1d(f"{ours}.ffn.fc1", f"{theirs}.mlp.c_fc")
            maps += _conv1d(f"{ours}.ffn.fc2", f"{theirs}.mlp.c_proj")
        return maps + _norm("norm_f", f"{t}ln_f") + lm_head_map(self.tied)


def _conv1d(ours: str, theirs: str) -> list[TensorMap]:
    return [
        TensorMap(f"{ours}.weight", (f"{theirs}.weight",), transpose=True),
        TensorMap(f"{ours}.bias", (f"{theirs}.bias",), zeros_like=f"{ours}.weight"),
    ]


def _norm(ours: str, theirs: str) -> list[TensorMap]:
    return [
        TensorMap(f"{ours}.weight", (f"{theirs}.weight",)),
        TensorMap(f"{ours}.bias", (f"{theirs}.bias",), zeros_like=f"{ours}.weight"),
    ]
