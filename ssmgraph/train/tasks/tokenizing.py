"""Tokenizers of the ``text`` task: a Hugging Face ``tokenizers`` tokenizer, or raw bytes.

``tokenizer`` names a ``tokenizer.json`` file or a folder holding one: a Hugging Face
checkpoint folder, an ssmgraph model imported from one (its files are in ``hf/``), or a
training run whose latest checkpoint is such a model. Without one, documents are UTF-8 bytes
(ids 0 .. 255) and the end-of-document id is 256.

The end-of-document id: the ``eod`` option's token if given; else the tokenizer's
``eos_token`` (from ``tokenizer_config.json`` beside ``tokenizer.json``) when its vocabulary
holds it; else the first of :data:`KNOWN_EOD` that it holds; else a new id one past the
vocabulary (the task's vocabulary grows by one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmgraph.errors import SsmgraphError
from ssmgraph.folders import latest_checkpoint
from ssmgraph.train.tasks.text import TextDataError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
HF_FILES = "hf"
"""Where an imported model keeps its tokenizer files (ssmgraph.interop.hf.metadata.FILES_FOLDER)."""
BYTE_VOCAB = 256
KNOWN_EOD = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
INSTALL = "pip install 'ssmgraph[text]' (or pip install tokenizers)"


@dataclass(frozen=True)
class TokenizerSource:
    """What identifies a tokenizer for the cache, read without loading it."""

    path: Path | None
    """The tokenizer.json file; None: bytes."""
    fingerprint: str
    """sha256 of tokenizer.json and tokenizer_config.json (``bytes`` for the byte tokenizer)."""


def find_tokenizer(spec: str | None) -> TokenizerSource:
    """The tokenizer.json that ``spec`` names (None: bytes), with its fingerprint."""
    if spec is None:
        return TokenizerSource(None, "bytes")
    given = Path(spec).expanduser()
    if not given.exists():
        raise TextDataError(f"tokenizer {given}: no such file or directory")
    path = given if given.is_file() else _tokenizer_in(given)
    digest = hashlib.sha256()
    for part in (path, path.parent / CONFIG_FILE):
        if part.is_file():
            try:
                digest.update(part.read_bytes())
            except OSError as exc:
                raise TextDataError(f"{part}: cannot be read ({exc.strerror or exc})") from exc
        digest.update(b"\x00")
    return TokenizerSource(path, digest.hexdigest())


def _tokenizer_in(folder: Path) -> Path:
    checkpoint = latest_checkpoint(folder)
    places = [folder, folder / HF_FILES] + ([checkpoint / HF_FILES] if checkpoint is not None else [])
    for place in places:
        if (place / TOKENIZER_FILE).is_file():
            return place / TOKENIZER_FILE
    others = sorted(p.name for p in folder.glob("*") if p.name in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt"))
    hint = (
        f" (it has {', '.join(others)}: save the tokenizer with transformers' AutoTokenizer.save_pretrained to get {TOKENIZER_FILE})"
        if others
        else ""
    )
    raise TextDataError(
        f"tokenizer {folder}: no {TOKENIZER_FILE} in this folder, its {HF_FILES}/ or its latest checkpoint{hint}; "
        f"give -t tokenizer=PATH/{TOKENIZER_FILE}"
    )


class TextTokenizer:
    """Encodes documents to token ids; ``vocab_size`` counts the end-of-document id."""

    def __init__(self, source: TokenizerSource, eod: str | None):
        self.source = source
        if source.path is None:
            if eod is not None:
                raise TextDataError(f"eod {eod!r} names a tokenizer's token; without a tokenizer the end-of-document id is 256")
            self.tokenizer: Any = None
            self.eod_id, self.vocab_size = BYTE_VOCAB, BYTE_VOCAB + 1
            return
        try:
            from tokenizers import Tokenizer  # optional: the text task with a tokenizer needs it
        except ImportError as exc:
            raise SsmgraphError(f"the text task's tokenizer option needs the tokenizers package: {INSTALL}") from exc
        try:
            self.tokenizer = Tokenizer.from_file(str(source.path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a plain Exception for a bad file
            raise TextDataError(f"{source.path}: not a Hugging Face tokenizer file ({exc})") from None
        ids = self.tokenizer.get_vocab(with_added_tokens=True).values()
        size = max(ids, default=-1) + 1
        self.eod_id = self._eod(eod, size)
        self.vocab_size = max(size, self.eod_id + 1)

    def _eod(self, eod: str | None, size: int) -> int:
        if eod is not None:
            found = self.tokenizer.token_to_id(eod)
            if found is None:
                raise TextDataError(f"eod {eod!r} is not a token of {self.source.path}")
            return int(found)
        for token in (_configured_eos(self.source.path), *KNOWN_EOD):
            found = self.tokenizer.token_to_id(token) if token else None
            if found is not None:
                return int(found)
        return size

    def encode(self, documents: list[str]) -> list[np.ndarray]:
        """Each document's token ids (no special tokens added), as int64 arrays."""
        if self.tokenizer is None:
            return [np.frombuffer(d.encode("utf-8"), dtype=np.uint8).astype(np.int64) for d in documents]
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [np.asarray(e.ids, dtype=np.int64) for e in encode(documents, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (bytes: the end-of-document id and other ids past 255 are dropped)."""
        if self.tokenizer is None:
            return bytes(i for i in ids if i < BYTE_VOCAB).decode("utf-8", errors="replace")
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))


def _configured_eos(path: Path | None) -> str | None:
    config = path.parent / CONFIG_FILE if path is not None else None
    if config is None or not config.is_file():
        return None
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None  # a config that cannot be read names no eos: the fallbacks apply
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None
