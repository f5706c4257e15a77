"""What a Hugging Face family provides to the converters, and the pieces the families share.

A :class:`Layout` holds the numbers that fix one model of a family (sizes, eps, biases,
tying). It is read from config.json (import) or from a saved ssmgraph model (export), and
gives the three things both directions need: the ssmgraph blueprint, the config.json
fields, and the :class:`TensorMap` list that pairs every ssmgraph tensor with its Hugging
Face tensor(s).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf.checkpoint import HFConfig

TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
HELP_LAYOUTS = (
    "export maps the GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Phi-3, Mamba and Mamba-2 layouts exactly (docs/interop.md): "
    "models built from blueprints/gpt.yaml, llama.yaml, mamba.yaml or mamba2.yaml, or imported with `ssmgraph import hf`"
)


@dataclass(frozen=True)
class TensorMap:
    """One ssmgraph tensor and the Hugging Face tensor(s) it is made of."""

    ssm: str
    hf: tuple[str, ...]
    """Several names: stacked along dim 0 (Llama's q_proj, k_proj, v_proj make qkv)."""
    split: tuple[int, ...] = ()
    """Export: the rows of each of several ``hf`` tensors."""
    transpose: bool = False
    """GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)."""
    zeros_like: str | None = None
    """Export: when the run has no such tensor (``bias: false``), write zeros as long as this tensor's rows."""
    rows: tuple[int, int, int] | None = None
    """(start, stop, total): this tensor is rows start:stop of the one ``hf`` tensor of ``total`` rows, which
    holds several ssmgraph tensors (Phi-3's gate_up_proj is w_gate and w_up); export stacks them back."""
    interleaved: int = 0
    """Heads whose rows the ``hf`` tensor interleaves, head by head [q | k | v] (GPT-NeoX's query_key_value);
    import reorders them to q | k | v (``mix.attention``'s ``qkv``), export back. 0: rows in the same order."""


class Layout(ABC):
    """One family: class attributes name it, instances (frozen dataclasses) describe one model."""

    model_type: ClassVar[str]
    """config.json's ``model_type``."""
    architecture: ClassVar[str]
    """The transformers class that loads an exported checkpoint (config.json's ``architectures``)."""
    title: ClassVar[str]
    signature: ClassVar[str]
    """The block that marks this family's models; export tries FAMILIES in order, so a later family's layout must
    not have it, unless ``fits`` tells them apart."""
    prefix: ClassVar[str]
    """The base model's attribute in tensor names (``transformer.``); base-model checkpoints omit it."""
    ignored: ClassVar[tuple[str, ...]] = ()
    """Patterns of checkpoint tensors that are buffers, not weights (old causal masks, RoPE tables)."""
    carried: ClassVar[tuple[str, ...]] = TOKEN_IDS
    head_key: ClassVar[str] = "lm_head.weight"
    """The LM head's tensor (outside the base model's ``prefix``); a stored copy of a tied head is skipped."""
    """Fields an import keeps in meta.json and an export writes back (ssmgraph has no use for them)."""
    tied: bool

    @classmethod
    def fits(cls, model: CompiledModel) -> bool:
        """Whether a model with the ``signature`` block has this family's features (families sharing a signature)."""
        return True

    @classmethod
    @abstractmethod
    def from_config(cls, config: HFConfig) -> Layout:
        """Read and check config.json; an unsupported value raises HFConfigError naming the field."""

    @classmethod
    @abstractmethod
    def from_model(cls, reader: ModelReader) -> Layout:
        """Read the numbers from a saved model's nodes (whose structure is checked afterwards)."""

    @abstractmethod
    def blueprint(self) -> dict[str, Any]:
        """The ssmgraph blueprint of this model, as plain data."""

    @abstractmethod
    def hf_config(self) -> dict[str, Any]:
        """config.json's architecture fields."""

    @abstractmethod
    def tensor_maps(self) -> list[TensorMap]:
        """Every ssmgraph tensor but tied aliases, with its Hugging Face source."""

    def is_ignored(self, key: str) -> bool:
        """A checkpoint tensor that carries no weight of this layout (buffers; a tied lm_head copy)."""
        return any(re.search(p, key) for p in self.ignored) or (self.tied and key == self.head_key)

    def common_config(self) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "float32",
            **dict.fromkeys(TOKEN_IDS),  # not the family's defaults, which may not be in this vocabulary
        }


class ModelReader:
    """A saved model's nodes, as a layout's ``from_model`` reads them; a missing node is an HFExportError."""

    def __init__(self, model: CompiledModel, title: str, where: str):
        self.model, self.title, self.where = model, title, where

    def args(self, path: str, block: str) -> dict[str, Any]:
        info = self.model.nodes.get(path)
        if info is None or info.block != block:
            found = "no such node" if info is None else f"{path} is {info.block}"
            raise HFExportError(f"{self.where}: the {self.title} layout needs node {path!r} ({block}); {found}", HELP_LAYOUTS)
        return info.args

    def rows(self, tensor: str) -> int:
        """The first dimension of a tensor (the width the arguments leave implicit)."""
        return int(self.model.state_dict()[tensor].shape[0])

    def layers(self) -> int:
        found = {int(m.group(1)) for p in self.model.nodes if (m := re.fullmatch(r"blocks\.(\d+)\.mix", p))}
        if not found:
            raise HFExportError(f"{self.where}: no layers blocks.0.mix, blocks.1.mix, ... (a stack named 'blocks')", HELP_LAYOUTS)
        return max(found) + 1

    def tied(self) -> bool:
        return self.model.tied.get("head.weight") == "embed.weight"


def prenorm_body(
    norm: str, norm_args: dict[str, Any], mix_args: dict[str, Any], ffn: str, ffn_args: dict[str, Any]
) -> dict[str, Any]:
    """x + attention(norm(x)), then + ffn(norm(.)): the layer of GPT-2 and Llama (names as blueprints/gpt.yaml)."""
    return {
        "inputs": ["x"],
        "nodes": {
            "norm1": {"block": norm, "in": "x", "args": norm_args},
            "mix": {"block": "mix.attention", "in": "norm1", "args": mix_args},
            "res1": {"block": "struct.add", "in": ["x", "mix"]},
            "norm2": {"block": norm, "in": "res1", "args": norm_args},
            "ffn": {"block": ffn, "in": "norm2", "args": ffn_args},
            "out": {"block": "struct.add", "in": ["res1", "ffn"]},
        },
        "outputs": {"x": "out"},
    }


def language_model(
    name: str,
    doc: str,
    first: dict[str, Any],
    body: dict[str, Any],
    *,
    layers: int,
    final_norm: dict[str, Any],
    vocab: int,
    tied: bool,
) -> dict[str, Any]:
    """A decoder blueprint: ``first`` nodes (ending in ``stack_input``), a stack of ``body``, final norm, LM head."""
    *_, stack_input = first
    head: dict[str, Any] = {"block": "head.lm", "in": "norm_f", "args": {"vocab": vocab}}
    if tied:
        head["tie"] = {"weight": "embed.weight"}
    return {
        "ssmgraph": 1,
        "name": name,
        "doc": doc,
        "inputs": {"tokens": {"dtype": "int64", "shape": ["batch", "seq"]}},
        "nodes": {
            **first,
            "blocks": {"repeat": layers, "in": stack_input, "carry": "x", "body": body},
            "norm_f": {**final_norm, "in": "blocks"},
            "head": head,
        },
        "outputs": {"logits": "head"},
        "taps": {"hidden": {"at": "blocks.*.out"}},
    }


def embed_node(vocab: int, dim: int, scale: float = 1.0) -> dict[str, Any]:
    args: dict[str, Any] = {"vocab": vocab, "dim": dim}
    if scale != 1.0:
        args["scale"] = scale
    return {"embed": {"block": "embed.token", "in": "tokens", "args": args}}


def lm_head_map(tied: bool, key: str = "lm_head.weight") -> list[TensorMap]:
    """A tied head is the embedding (transformers re-ties it on load); an untied one is ``key``."""
    return [] if tied else [TensorMap("head.weight", (key,))]
