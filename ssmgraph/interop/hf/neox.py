"""GPT-NeoX (transformers ``GPTNeoXForCausalLM``: Pythia, GPT-NeoX-20B) <-> an ssmgraph layout.

Token embedding (``embed_in``), layers of LayerNorm'd attention and a GELU MLP, final LayerNorm,
untied LM head (``embed_out``) unless ``tie_word_embeddings: true``. Each layer is

* parallel (``use_parallel_residual: true``, the default): x + attn(ln1(x)) + mlp(ln2(x)) — ``norm2``
  reads the layer's input and one ``struct.add`` sums the three;
* sequential (``false``): h = x + attn(ln1(x)), then h + mlp(ln2(h)), GPT-2's layer.

``attention.query_key_value`` is one tensor whose rows are interleaved per head ([heads, 3,
head_dim]: head 0's q, k, v, then head 1's, ...); import gathers them into ``mix.attention``'s
q | k | v rows, export interleaves them back (``TensorMap.interleaved``). It stays one tensor: a
merge treats it whole, as mergekit does. RoPE rotates the first ``int(head_dim · rotary_pct)``
features of each head (``rope_dims``; 5.x: ``rope_parameters.partial_rotary_factor``, 4.x:
``rotary_pct``, default 0.25), with base ``rotary_emb_base`` (4.x) or ``rope_theta``;
``attention_bias`` covers ``query_key_value`` and ``dense``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.checkpoint import HFConfig
from ssmgraph.interop.hf.gpt2 import ACTIVATIONS, EXPORT_ACTIVATIONS
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
from ssmgraph.interop.hf.llama import mix_args
from ssmgraph.interop.hf.rope import read_rope, rope_args, rope_config


@dataclass(frozen=True)
class GPTNeoX(Layout):
    model_type = "gpt_neox"
    architecture = "GPTNeoXForCausalLM"
    title = "GPT-NeoX"
    signature = "mix.attention"
    prefix = "gpt_neox."
    head_key = "embed_out.weight"
    ignored = (r"\.attention\.(masked_)?bias$", r"\.rotary_emb\.inv_freq$")  # buffers older checkpoints saved
    carried = (*TOKEN_IDS, "max_position_embeddings")

    vocab: int
    dim: int
    layers: int
    heads: int
    hidden: int
    activation: str
    eps: float
    rope: dict[str, Any]
    """mix.attention's ``rope*`` arguments, ``rope_dims`` among them when not every feature rotates."""
    parallel: bool
    bias: bool
    tied: bool

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        norm = model.nodes.get("blocks.0.norm1")
        return norm is not None and norm.block == "norm.layer" and bool(mix_args(model).get("rope"))

    @classmethod
    def from_config(cls, config: HFConfig) -> GPTNeoX:
        dim, heads = config.value("hidden_size", int, 6144, minimum=1), config.value("num_attention_heads", int, 64, minimum=1)
        if dim % heads:
            raise config.fail("num_attention_heads", f"{heads} does not divide hidden_size {dim}")
        head_dim = config.value("head_dim", int, None, minimum=1)
        if head_dim is not None and head_dim != dim // heads:  # transformers' attention ignores it, its RoPE table reads it
            raise config.fail("head_dim", f"{head_dim} is not hidden_size / num_attention_heads", "only the default converts")
        max_len = config.value("max_position_embeddings", int, 2048, minimum=1)
        rope = read_rope(config, max_len, theta_key="rotary_emb_base", partial=True)
        dims = _rope_dims(config, dim // heads)
        return cls(
            vocab=config.value("vocab_size", int, 50432, minimum=1),
            dim=dim,
            layers=config.value("num_hidden_layers", int, 44, minimum=1),
            heads=heads,
            hidden=config.value("intermediate_size", int, 24576, minimum=1),
            activation=config.choice("hidden_act", ACTIVATIONS, "gelu"),
            eps=config.value("layer_norm_eps", float, 1e-5, minimum=0),
            rope={**rope, **({"rope_dims": dims} if dims != dim // heads else {})},
            parallel=config.value("use_parallel_residual", bool, True),
            bias=config.value("attention_bias", bool, True),
            tied=config.value("tie_word_embeddings", bool, False),
        )

    @classmethod
    def from_model(cls, reader: ModelReader) -> GPTNeoX:
        embed = reader.args("embed", "embed.token")
        mix = reader.args("blocks.0.mix", "mix.attention")
        ffn = reader.args("blocks.0.ffn", "ffn.mlp")
        reader.args("blocks.0.norm2", "norm.layer")
        dims = mix.get("rope_dims")
        return cls(
            vocab=embed["vocab"],
            dim=embed["dim"],
            layers=reader.layers(),
            heads=mix["heads"],
            hidden=reader.rows("blocks.0.ffn.fc1.weight"),
            activation=ffn["activation"],
            eps=reader.args("blocks.0.norm1", "norm.layer")["eps"],
            rope={**rope_args(mix), **({"rope_dims": dims} if dims is not None else {})},
            parallel="blocks.0.res1" not in reader.model.nodes,
            bias=mix["bias"],
            tied=reader.tied(),
        )

    def blueprint(self) -> dict[str, Any]:
        norm_args = {"eps": self.eps, "bias": True}
        mix = {"heads": self.heads, **self.rope, "causal": True, "bias": self.bias}
        ffn = {"hidden": self.hidden, "activation": self.activation, "bias": True}
        body = (_parallel if self.parallel else prenorm_body)("norm.layer", norm_args, mix, "ffn.mlp", ffn)
        doc = (
            "GPT-NeoX (Hugging Face gpt_neox): token embedding, "
            + ("parallel" if self.parallel else "sequential")
            + " LayerNorm'd attention (partial RoPE) and GELU MLP layers, final LayerNorm, LM head."
        )
        final = {"block": "norm.layer", "args": norm_args}
        first = embed_node(self.vocab, self.dim)
        return language_model(
            self.model_type, doc, first, body, layers=self.layers, final_norm=final, vocab=self.vocab, tied=self.tied
        )

    def hf_config(self) -> dict[str, Any]:
        head_dim = self.dim // self.heads
        dims = self.rope.get("rope_dims", head_dim)
        pct = dims / head_dim
        if int(head_dim * pct) != dims:  # transformers truncates head_dim · pct: stay at or just above dims
            pct = math.nextafter(pct, math.inf)
        rope = {**rope_config(self.rope), "partial_rotary_factor": pct}
        return {
            **self.common_config(),
            "vocab_size": self.vocab,
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.hidden,
            "hidden_act": EXPORT_ACTIVATIONS[self.activation],
            "layer_norm_eps": self.eps,
            "use_parallel_residual": self.parallel,
            "attention_bias": self.bias,
            # transformers 5 reads rope_parameters, 4.x rotary_pct and rotary_emb_base (and rope_scaling when scaled)
            "rope_parameters": rope,
            "rotary_pct": pct,
            "rotary_emb_base": self.rope["rope_base"],
            **({"rope_scaling": rope} if rope["rope_type"] != "default" else {}),
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
        }

    def tensor_maps(self) -> list[TensorMap]:
        t = self.prefix
        maps = [TensorMap("embed.weight", (f"{t}embed_in.weight",))]
        for i in range(self.layers):
            ours, theirs = f"blocks.{i}", f"{t}layers.{i}"
            for part in ("weight", "bias") if self.bias else ("weight",):
                maps += [
                    TensorMap(f"{ours}.mix.qkv.{part}", (f"{theirs}.attention.query_key_value.{part}",), interleaved=self.heads),
                    TensorMap(f"{ours}.mix.out_proj.{part}", (f"{theirs}.attention.dense.{part}",)),
                ]
            for part in ("weight", "bias"):
                maps += [
                    TensorMap(f"{ours}.norm1.{part}", (f"{theirs}.input_layernorm.{part}",)),
                    TensorMap(f"{ours}.norm2.{part}", (f"{theirs}.post_attention_layernorm.{part}",)),
                    TensorMap(f"{ours}.ffn.fc1.{part}", (f"{theirs}.mlp.dense_h_to_4h.{part}",)),
                    TensorMap(f"{ours}.ffn.fc2.{part}", (f"{theirs}.mlp.dense_4h_to_h.{part}",)),
                ]
        final = [TensorMap(f"norm_f.{p}", (f"{t}final_layer_norm.{p}",)) for p in ("weight", "bias")]
        return maps + final + lm_head_map(self.tied, self.head_key)


def _parallel(
    norm: str, norm_args: dict[str, Any], mix_args: dict[str, Any], ffn: str, ffn_args: dict[str, Any]
) -> dict[str, Any]:
    """x + attention(norm1(x)) + ffn(norm2(x)): both branches read the layer's input (GPT-J, GPT-NeoX)."""
    return {
        "inputs": ["x"],
        "nodes": {
            "norm1": {"block": norm, "in": "x", "args": norm_args},
            "mix": {"block": "mix.attention", "in": "norm1", "args": mix_args},
            "norm2": {"block": norm, "in": "x", "args": norm_args},
            "ffn": {"block": ffn, "in": "norm2", "args": ffn_args},
            "out": {"block": "struct.add", "in": ["x", "mix", "ffn"]},
        },
        "outputs": {"x": "out"},
    }


def _rope_dims(config: HFConfig, head_dim: int) -> int:
    """The features of each head that rotate: int(head_dim · partial_rotary_factor), as transformers computes them."""
    field = "rope_parameters" if config.data.get("rope_parameters") is not None else "rope_scaling"
    params = config.data.get(field) or {}
    where = f"{field}.partial_rotary_factor" if "partial_rotary_factor" in params else "rotary_pct"
    value = params["partial_rotary_factor"] if "partial_rotary_factor" in params else config.data.get("rotary_pct", 0.25)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise config.fail(where, f"expected a number above 0 and at most 1, got {value!r}")
    dims = int(head_dim * value)
    if dims < 2 or dims % 2:
        raise config.fail(
            where,
            f"{value!r} rotates {dims} of the {head_dim} features of a head: mix.attention rotates an even number, at least 2",
            "transformers then rotates one feature more at the frequencies of the odd count, which mix.attention cannot",
        )
    return dims
