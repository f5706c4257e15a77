"""``tokenizer_source``: the output's vocabulary, and the embeddings moved onto it, as mergekit 0.1.5
builds them (``mergekit/tokenizer/build.py`` ``build_tokenizer``, ``build_union_tokenizer``, and
``embed.py`` ``PermutedVocabulary``) whenever a config names a tokenizer source.

The vocabulary: ``base``, the base model's tokenizer (else the first model's); a model folder, its
tokenizer; ``union``, the base's with every token of the other models' tokenizers that it lacks
appended (``add_tokens``, in the order the models are listed, the base first), then every added
token (special tokens) of every model. Its size is the number of tokens, which drops the rows of
a model's embedding beyond its tokenizer (padding rows), as mergekit does. Each token-indexed tensor (the rows of the embedding
and of an untied LM head: tensors outside the layers with ``vocab_size`` rows) is then read per
model onto the output's ids: a token the model has keeps its row; one it lacks gets, for every
model, the row of the only model that has it, else the base's row when the base has it, else the
mean of the rows of the models that have it (zero when none has). The merge method then merges
these as any tensor. config.json's ``vocab_size`` becomes the vocabulary's size and its tokenizer
is saved in the output (``save_pretrained``). Building it needs ``transformers`` (imported here only).

Union: the ids of the tokens the base lacks differ from mergekit's: mergekit appends them in the order
``get_vocab()`` iterates (a Rust hash map's, which changes from run to run) and lists the models in a
Python set's order; ssmgraph appends each model's by id, the models in the config's order (the base
first), so a merge is reproducible. The tokens, the base's ids, the size and every token's rows are
mergekit's; the added tokens come last in both. Refused: a tokenizer with ids at or beyond its model's ``vocab_size``
(mergekit strips those from BPE tokenizers), a model without a tokenizer (mergekit assumes the
base's), ``tokenizer:`` sections (token surgery) and ssmgraph model inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssmgraph.errors import Collector
from ssmgraph.merge.mergekit.dialect import MergekitConfig
from ssmgraph.merge.mergekit.inputs import LAYER, HFInput

if TYPE_CHECKING:  # engine.py builds the vocabulary
    from ssmgraph.merge.mergekit.engine import Planned


class OutputVocab:
    """The output's tokenizer, and for each model the row of each output id in its own tensors (-1: it lacks the token)."""

    def __init__(self, models: list[HFInput], source: Path | None, union: bool):
        """``models``: every input, the base (or the first) first; ``source``: a tokenizer folder (null: the base's)."""
        from transformers import AutoTokenizer  # deferred: optional, and slow to import

        tokenizers, vocabs = {}, {}  # each model's tokenizer and its token -> id map, read once
        for model in models:
            folder = model.folder.resolve()
            tokenizers[folder] = _load(AutoTokenizer, model.folder)
            vocabs[folder] = tokenizers[folder].get_vocab()
            size, vocab = _vocab_size(model), vocabs[folder]
            beyond = sorted(t for t, i in vocab.items() if i >= size)
            if beyond:
                raise ValueError(
                    f"{model.folder}: tokens {', '.join(map(repr, beyond[:3]))} have ids at or beyond vocab_size {size}"
                )
        union_tokens: dict[str, None] = {}  # every token, in order of first appearance
        added: dict[str, Any] = {}  # content -> AddedToken, the first model's settings
        for folder, tokenizer in tokenizers.items():
            own = vocabs[folder]
            union_tokens.update(dict.fromkeys(sorted(own, key=own.__getitem__)))  # by id: mergekit's order is a hash map's
            for info in tokenizer.added_tokens_decoder.values():
                added.setdefault(info.content, info)
        base = tokenizers[models[0].folder.resolve()]
        if source is not None:
            self.tokenizer = _load(AutoTokenizer, source)
        elif not union:
            self.tokenizer = base
        else:
            with tempfile.TemporaryDirectory() as folder:  # a copy: the base's own tokenizer stays as it is
                base.save_pretrained(folder)
                self.tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
            known = vocabs[models[0].folder.resolve()]
            for token in union_tokens:
                if token not in added and token not in known:
                    self.tokenizer.add_tokens(token)
            for info in added.values():
                self.tokenizer.add_tokens(info)
        vocab = self.tokenizer.get_vocab()
        self.size = len(vocab)
        if sorted(vocab.values()) != list(range(self.size)):
            raise ValueError("the output tokenizer's ids are not 0 to its size - 1")
        self.rows: dict[Path, torch.Tensor] = {}
        for folder, own in vocabs.items():
            rows = torch.full((self.size,), -1, dtype=torch.long)
            for token, index in vocab.items():
                rows[index] = own.get(token, -1)
            self.rows[folder] = rows

    def aligned(self, item: Planned, dtype: torch.dtype, via: torch.dtype | None) -> torch.Tensor:
        """``[inputs, vocabulary size, ...]``: each input's rows of ``item`` at the output's ids (mergekit's PermutedVocabulary)."""
        tensors, present, rows = [], [], []
        for model, name, _ in item.inputs:
            tensor = torch.empty(model.shapes[name][0], dtype=dtype)
            model.read_into(name, tensor, via)
            tensors.append(tensor)
            rows.append(self.rows[model.folder.resolve()])
            present.append(rows[-1] >= 0)
        has = torch.stack(present)
        count = has.sum(0)
        fallback = torch.zeros(item.shape, dtype=dtype)
        base = item.base
        for i, (tensor, own, here) in enumerate(zip(tensors, rows, present)):
            donor = here & (count == 1)  # the only model with the token
            if base == i:
                donor |= here & (count > 1)  # the base has it
            fallback[donor] = tensor[own[donor]]
        mean = (count > 1) & ~(has[base] if base >= 0 else torch.zeros_like(count, dtype=torch.bool))
        if mean.any():
            total = torch.zeros((int(mean.sum()), *item.shape[1:]), dtype=dtype)
            for tensor, own, here in zip(tensors, rows, present):  # in model order, then divided: as mergekit sums
                take = here[mean]
                total[take] = total[take] + tensor[own[mean][take]]
            fallback[mean] = total / count[mean].reshape(-1, *[1] * (len(item.shape) - 1)).to(dtype)
        out = torch.empty((len(tensors), *item.shape), dtype=dtype)
        for row, tensor, own, here in zip(out, tensors, rows, present):
            row.copy_(fallback)
            row[here] = tensor[own[here]]
        return out

    def save(self, folder: Path) -> list[str]:
        """Write the output tokenizer; the names of the files written."""
        before = set(folder.iterdir())
        self.tokenizer.save_pretrained(str(folder))
        return sorted(p.name for p in set(folder.iterdir()) - before)


def _load(auto: Any, folder: Path) -> Any:
    try:
        return auto.from_pretrained(str(folder), use_fast=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a folder without a tokenizer
        raise ValueError(f"{folder}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None


def is_vocab_tensor(model: HFInput, name: str) -> bool:
    """A token-indexed tensor: outside the layers, with the model's ``vocab_size`` rows (mergekit's ``vocabulary_axis: 0``)."""
    shape = model.shapes.get(name, ((),))[0]
    return not LAYER.match(name) and len(shape) >= 1 and shape[0] == _vocab_size(model)


def _vocab_size(model: HFInput) -> int:
    size = model.config.get("vocab_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else -1


def plan_vocab(errors: Collector, cfg: MergekitConfig, inputs: dict[Path, HFInput], reference: HFInput) -> OutputVocab | None:
    """The output vocabulary ``tokenizer_source`` names (the reference model first), or None with the reason in ``errors``."""
    where = cfg.marks.get("tokenizer_source") or cfg.marks.get("top")
    if any(not (model.folder / "config.json").is_file() for model in inputs.values()):
        errors.add(
            "E112",
            "tokenizer_source: ssmgraph model inputs carry the base's Hugging Face files, not a tokenizer of their own",
            where,
            "tokenizer_source",
            "leave tokenizer_source out for ssmgraph models",
        )
        return None
    try:
        models = [reference, *(m for m in inputs.values() if m is not reference)]
        return OutputVocab(models, cfg.tokenizer_source, cfg.union)
    except ValueError as err:
        errors.add("E112", f"tokenizer_source: {err}", where, "tokenizer_source", "merge models whose tokenizers load")
        return None
