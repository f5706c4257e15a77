"""``text``: language modelling on your documents, tokenized by a Hugging Face tokenizer (or bytes).

Documents (ssmgraph.train.tasks.documents) are tokenized once into a memory-mapped cache
(ssmgraph.train.tasks.token_cache) as one stream, each document followed by the
end-of-document id (ssmgraph.train.tasks.tokenizing). A fixed share of the *documents* is
held out: a permutation of the documents drawn from a fixed seed is walked until the held-out
documents hold ``valid_fraction`` of the tokens, so no document is in both parts. Each part is
the stream of its documents in their original order; training windows of ``seq_len + 1``
tokens start anywhere in the training stream (crossing from one document into the next, as
packing does), at offsets drawn from the trainer's generator, so a resumed run draws the same
windows. Evaluation reads the validation stream from its start in non-overlapping windows.

``bits_per_byte``: the held-out loss in bits per token divided by the validation part's UTF-8
bytes per token (``bytes_per_token``), i.e. loss_nats * tokens / bytes / ln 2, where tokens
count the end-of-document ids and bytes the documents' text: comparable across tokenizers and
with the ``bytes`` task's ``bits``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import Param, TaskSpec
from ssmgraph.train.tasks.base import Batch
from ssmgraph.train.tasks.documents import DOCUMENT_MODES, data_files, read_documents, text_mode
from ssmgraph.train.tasks.text import BUNDLED, CORPUS, TextDataError, WindowedText
from ssmgraph.train.tasks.token_cache import TokenStore, cache_key, cache_places, load_or_build
from ssmgraph.train.tasks.tokenizing import TextTokenizer, find_tokenizer

SPLIT_SEED = 20_240_601
"""Seed of the permutation that picks the held-out documents (fixed: every run holds out the same)."""


class Stream:
    """A part's documents read as one stream: runs of consecutive documents of the cache."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.tokens = tokens
        self.real = starts.astype(np.int64)
        lengths = (ends - starts).astype(np.int64)
        self.virtual = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.size = int(lengths.sum())

    def __len__(self) -> int:
        return self.size

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at ``positions`` (int64, any shape) of the stream."""
        run = np.searchsorted(self.virtual, positions, side="right") - 1
        return self.tokens[self.real[run] + positions - self.virtual[run]]


def runs(selected: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of consecutive selected documents."""
    index = np.flatnonzero(selected)
    first = np.concatenate([[True], np.diff(index) > 1])
    last = np.concatenate([np.diff(index) > 1, [True]])
    return starts[index[first]], ends[index[last]]


def held_out(lengths: np.ndarray, valid_fraction: float) -> np.ndarray:
    """A boolean mask of the held-out documents: a seeded permutation walked until the documents
    taken hold ``valid_fraction`` of the tokens (at least one, never all)."""
    order = torch.randperm(lengths.size, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    taken = np.cumsum(lengths[order])
    count = int(np.searchsorted(taken, valid_fraction * lengths.sum())) + 1
    mask = np.zeros(lengths.size, dtype=bool)
    mask[order[: min(count, lengths.size - 1)]] = True
    return mask


class TextTask(WindowedText):
    """Next-token prediction on packed, tokenized documents."""

    def __init__(
        self,
        path: str | None = None,
        corpus: str = "en",
        tokenizer: str | None = None,
        field: str = "text",
        documents: str = "auto",
        eod: str | None = None,
        seq_len: int = 256,
        valid_fraction: float = 0.1,
    ):
        root = Path(path).expanduser() if path is not None else BUNDLED[corpus]
        self.source, self.seq_len = str(root), seq_len
        self.files = data_files(root)
        mode = text_mode(self.files, documents)
        found = find_tokenizer(tokenizer)
        settings = {"field": field, "documents": mode, "tokenizer": found.fingerprint, "eod": eod}
        self.store: TokenStore = load_or_build(
            cache_places(root if path is not None else None),
            cache_key(root, self.files, settings),
            lambda: read_documents(self.files, field, mode),
            lambda: TextTokenizer(found, eod),
        )
        self.vocab_size = self.num_classes = self.store.vocab_size
        store, need = self.store, seq_len + 1
        starts, ends = store.starts, store.ends
        if ends.size < 2:
            raise TextDataError(
                f"{root}: one document only; the text task holds out whole documents, so it needs at least two "
                "(give more files or lines, or split text files with -t documents=paragraphs or lines)"
            )
        self.valid_mask = held_out(ends - starts, valid_fraction)
        self.parts = {
            name: Stream(store.tokens, *runs(mask, starts, ends))
            for name, mask in (("train", ~self.valid_mask), ("valid", self.valid_mask))
        }
        self.part_bytes = {
            "train": int(store.doc_bytes[~self.valid_mask].sum()),
            "valid": int(store.doc_bytes[self.valid_mask].sum()),
        }
        sizes = {name: part.size for name, part in self.parts.items()}
        if min(sizes.values()) < need:
            raise TextDataError(
                f"{root}: too short for seq_len {seq_len}: {ends[-1]} tokens in {ends.size} documents give {sizes['train']} "
                f"for training and {sizes['valid']} for validation (valid_fraction {valid_fraction:g}), and each part needs "
                f"at least {need} tokens for one window; give more text, or lower seq_len (or change valid_fraction)"
            )

    def part(self, split: str) -> Stream:
        """The training stream for ``train``; the validation stream for ``valid`` or ``test``."""
        if split in ("train", "valid"):
            return self.parts[split]
        if split == "test":
            return self.parts["valid"]
        raise SsmgraphError(f"the text task has splits 'train' and 'valid' (or 'test', the same part), not {split!r}")

    def _windows(self, stream: Stream, starts: torch.Tensor) -> Batch:
        positions = starts.numpy()[:, None] + np.arange(self.seq_len + 1)
        chunk = torch.from_numpy(stream.read(positions).astype(np.int64))
        return Batch(chunk[:, :-1], chunk[:, 1:])

    def bytes_per_token(self, split: str = "test") -> float:
        """The part's UTF-8 bytes per token (end-of-document ids counted as tokens, not bytes)."""
        name = "train" if split == "train" else "valid"
        self.part(split)
        return self.part_bytes[name] / self.parts[name].size

    def describe(self) -> str:
        docs = int(self.valid_mask.size)
        return (
            f"{super().describe()}, {self.parts['train'].size} training and {self.parts['valid'].size} validation tokens "
            f"({docs - int(self.valid_mask.sum())} and {int(self.valid_mask.sum())} documents) of {self.source}"
        )


TEXT = TaskSpec(
    name="text",
    doc="Language modelling on documents (.txt, .md, .jsonl, .json, .parquet) tokenized by a Hugging Face tokenizer, "
    "or bytes; packed with end-of-document tokens, cached, validation split by documents; reports bits_per_byte.",
    params=(
        Param(
            "path",
            str,
            None,
            "a data file or a directory of them (.txt, .md, .jsonl, .json, .parquet); null: the bundled sample",
            nullable=True,
            path=True,
        ),
        CORPUS,
        Param(
            "tokenizer",
            str,
            None,
            "a tokenizer.json, or a folder with one (a Hugging Face checkpoint, an imported model); null: bytes (vocab 257)",
            nullable=True,
            path=True,
        ),
        Param("field", str, "text", "the JSON field or Parquet column that holds each document's text"),
        Param(
            "documents",
            str,
            "auto",
            "how text files divide into documents: file, paragraphs (blank lines), lines; auto: file, or paragraphs for one file",
            choices=DOCUMENT_MODES,
        ),
        Param("eod", str, None, "the end-of-document token; null: the tokenizer's eos (or a new id)", nullable=True),
        Param("seq_len", int, 256, "tokens per window", min=1, max=1_000_000),
        Param(
            "valid_fraction", float, 0.1, "share of the tokens, in whole documents, held out for validation", min=0.001, max=0.5
        ),
    ),
    factory=TextTask,
    reference="Radford et al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2: BPE, packed documents "
    "with <|endoftext|>); Gao et al. 2020, The Pile (bits per UTF-8 byte)",
)


@hookimpl
def ssmgraph_tasks() -> list[TaskSpec]:
    return [TEXT]
