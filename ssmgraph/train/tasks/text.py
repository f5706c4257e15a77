"""``bytes``: byte-level language modelling on your own text, or on a bundled sample.

The text (a UTF-8 file, or every ``.txt``/``.md`` file under a directory, in sorted order) is
read as raw bytes (vocabulary 256) and split once: the last ``valid_fraction`` of the bytes is
the validation part. Training windows are drawn at random from the training part; evaluation
reads the validation part in order, in non-overlapping windows. The ``bits`` metric of an
``lm`` task is then bits per byte, comparable across tokenizers.

Without ``path`` the task reads a bundled public-domain sample (``ssmgraph/train/data``):
``corpus: en`` is Lincoln's Gettysburg Address (1863) then chapters I-V of Lewis Carroll's
*Alice's Adventures in Wonderland* (1865, Millennium Fulcrum edition), about 61 KB, so its
validation tail is Carroll's prose; ``corpus: fr`` is chapters I-II and the first half of III of
Alexandre Dumas' *Le Comte de Monte-Cristo* (1844), about 47 KB. All are in the public domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import Param, TaskSpec
from ssmgraph.train.tasks.base import Batch, Task

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED = {"en": DATA_DIR / "sample.txt", "fr": DATA_DIR / "sample_fr.txt"}
TEXT_SUFFIXES = (".txt", ".md")
BOM = "\ufeff"


class TextDataError(SsmgraphError):
    """The text given to the bytes or text task cannot be used; the message names the file."""

    code = "E520"


def read_utf8(path: Path, task: str) -> str:
    """A file's text, without a leading byte-order mark; E520 naming the file (and the line of a
    bad byte) when it cannot be read, holds NUL bytes or is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TextDataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if b"\x00" in data:
        raise TextDataError(f"{path}: looks like a binary file (it contains NUL bytes); the {task} task reads UTF-8 text")
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TextDataError(
            f"{path}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line}); "
            "convert it, e.g. with iconv -t UTF-8"
        ) from exc


def read_corpus(path: str | Path) -> tuple[bytes, list[Path]]:
    """The bytes of a text file, or of every .txt/.md file under a directory (sorted, joined by newlines)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise TextDataError(f"{root}: no such file or directory")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise TextDataError(f"{root}: no text files ({', '.join(TEXT_SUFFIXES)}) in this directory")
    else:
        files = [root]
    parts = []
    for file in files:
        data = read_utf8(file, "bytes").encode("utf-8")
        if parts and data and not parts[-1].endswith(b"\n"):
            parts.append(b"\n")
        if data:
            parts.append(data)
    corpus = b"".join(parts)
    if not corpus.strip():
        what = "the text files in this directory are empty" if root.is_dir() else "empty file"
        raise TextDataError(f"{root}: {what}; the bytes task needs text to learn from")
    return corpus, files


class WindowedText(Task):
    """Language modelling on a stream of ids (``part(split)``, anything with ``len``): training
    windows of ``seq_len + 1`` ids start at offsets drawn from the trainer's generator;
    evaluation reads the part in order in non-overlapping windows. Subclasses give ``part`` and
    ``_windows`` (the batch of the windows at ``starts``)."""

    kind = "lm"
    seq_len: int

    def part(self, split: str) -> Any:
        raise NotImplementedError

    def _windows(self, data: Any, starts: Tensor) -> Batch:
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        data = self.part(split)
        starts = torch.randint(0, len(data) - self.seq_len, (batch_size,), generator=generator)
        return self._windows(data, starts)

    def eval_windows(self, split: str = "test", size: int | None = None) -> int:
        """How many non-overlapping windows ``eval_batches`` reads (capped at ``size``, default ``eval_size``)."""
        return min((len(self.part(split)) - 1) // self.seq_len, self.eval_size if size is None else size)

    def eval_batches(self, batch_size: int, split: str = "test", size: int | None = None) -> Iterator[Batch]:
        """The split read in order in non-overlapping windows, at most ``size`` of them."""
        data = self.part(split)
        starts = torch.arange(self.eval_windows(split, size)) * self.seq_len
        for i in range(0, starts.numel(), batch_size):
            yield self._windows(data, starts[i : i + batch_size])


class BytesTask(WindowedText):
    """Next-byte prediction on windows of a text: inputs ``data[i:i+L]``, targets ``data[i+1:i+L+1]``."""

    vocab_size = 256
    num_classes = 256

    def __init__(self, path: str | None = None, corpus: str = "en", seq_len: int = 256, valid_fraction: float = 0.1):
        source = Path(path).expanduser() if path is not None else BUNDLED[corpus]
        data, self.files = read_corpus(source)
        self.source = str(source)
        self.seq_len = seq_len
        n_valid = int(len(data) * valid_fraction)
        n_train = len(data) - n_valid
        need = seq_len + 1
        if n_train < need or n_valid < need:
            raise TextDataError(
                f"{source}: too short for seq_len {seq_len}: {len(data)} bytes give {n_train} for training and {n_valid} for "
                f"validation (valid_fraction {valid_fraction:g}), and each part needs at least {need} bytes for one window; "
                "give more text, or lower seq_len (or change valid_fraction)"
            )
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.train_data, self.valid_data = buffer[:n_train], buffer[n_train:]

    def part(self, split: str) -> Tensor:
        """The training bytes for ``train``; the validation bytes for ``valid`` or ``test``."""
        if split == "train":
            return self.train_data
        if split in ("valid", "test"):
            return self.valid_data
        raise SsmgraphError(f"the bytes task has splits 'train' and 'valid' (or 'test', the same part), not {split!r}")

    def _windows(self, data: Tensor, starts: Tensor) -> Batch:
        chunk = data[starts.unsqueeze(1) + torch.arange(self.seq_len + 1)].long()
        return Batch(chunk[:, :-1], chunk[:, 1:])

    def bytes_per_token(self, split: str = "test") -> float:
        """One: a token is a byte (``bits_per_byte`` equals ``bits``)."""
        return 1.0

    def describe(self) -> str:
        return f"{super().describe()}, {self.train_data.numel()} training and {self.valid_data.numel()} validation bytes of {self.source}"


CORPUS = Param(
    "corpus", str, "en", "the bundled sample used without path: en (Carroll, Lincoln) or fr (Dumas)", choices=("en", "fr")
)
"""The ``corpus`` option of the text tasks (``bytes``, ``text``)."""

BYTES = TaskSpec(
    name="bytes",
    doc="Byte-level language modelling on a text file or directory (or a bundled sample); the bits metric is bits per byte.",
    params=(
        Param(
            "path",
            str,
            None,
            "a UTF-8 text file, or a directory of .txt/.md files; null: the bundled sample text",
            nullable=True,
            path=True,
        ),
        CORPUS,
        Param("seq_len", int, 256, "bytes per window", min=1, max=1_000_000),
        Param("valid_fraction", float, 0.1, "share of the text, at its end, held out for validation", min=0.01, max=0.5),
    ),
    factory=BytesTask,
    reference="Graves 2013, Generating Sequences With Recurrent Neural Networks (byte-level modelling, bits per character)",
)


@hookimpl
def ssmgraph_tasks() -> list[TaskSpec]:
    return [BYTES]
