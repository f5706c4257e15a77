"""What a training task is: a source of batches, the shape of its inputs and targets, and its loss.

Three kinds of target, each with a loss and metrics the trainer knows:

- ``"lm"``: per-position token targets (B, L), ``IGNORE`` where nothing is scored; the model
  outputs logits (B, L, V). Loss: cross-entropy over scored positions; metric: token
  accuracy, and bits per byte/token.
- ``"classify"``: one label per sequence (B,); the model outputs logits (B, C). Loss:
  cross-entropy; metric: accuracy.
- ``"regress"``: one real target per sequence (B,); the model outputs (B, 1). Loss: mean
  squared error; metric: MSE (and accuracy within ``tolerance`` when the task sets one).

Batches are drawn from a ``torch.Generator`` the trainer owns, so a resumed run draws exactly
the batches an uninterrupted one would. Evaluation uses a fixed held-out set (``eval_batches``)
that does not depend on the training generator.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ssmgraph.errors import SsmgraphError

IGNORE = -100
EVAL_CHUNK = 64
"""Held-out examples are sampled this many at a time, whatever the evaluation batch size."""
HELD_OUT_SPLITS = ("test", "valid")
"""Synthetic tasks draw two independent held-out sets (each from its own fixed seed)."""
Kind = Literal["lm", "classify", "regress"]


class TaskOptionError(SsmgraphError):
    """Options that are each in range but do not fit together (e.g. too many tokens for seq_len)."""


def require(ok: bool, message: str) -> None:
    """Refuse a task's options with ``message`` unless ``ok``."""
    if not ok:
        raise TaskOptionError(message)


@dataclass
class Batch:
    inputs: Tensor
    """(B, L) int64 token ids, or (B, L, F) float features."""
    targets: Tensor
    """(B, L) int64 with IGNORE (lm); (B,) int64 (classify); (B,) float (regress)."""

    def __len__(self) -> int:
        return self.inputs.shape[0]


def rebatch(chunks: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """The examples of ``chunks``, in order, as batches of ``batch_size`` (the last one smaller)."""
    buffer: list[Batch] = []
    count = 0
    for chunk in chunks:
        buffer.append(chunk)
        count += len(chunk)
        while count >= batch_size:
            inputs, targets = torch.cat([b.inputs for b in buffer]), torch.cat([b.targets for b in buffer])
            yield Batch(inputs[:batch_size], targets[:batch_size])
            buffer, count = [Batch(inputs[batch_size:], targets[batch_size:])], count - batch_size
    if count:
        yield Batch(torch.cat([b.inputs for b in buffer]), torch.cat([b.targets for b in buffer]))


class Task:
    """Base class of tasks. Subclasses set the attributes and implement ``sample``."""

    kind: Kind = "lm"
    name: str = ""
    """The registered name (set by ``make_task``; empty for a task built by hand)."""
    vocab_size: int | None = None
    """Token ids lie in [0, vocab_size) (token inputs); None for float features."""
    feature_dim: int | None = None
    """F for float inputs of shape (B, L, F); None for token inputs."""
    num_classes: int | None = None
    """C for ``classify``; the output vocabulary V for ``lm``."""
    seq_len: int = 0
    tolerance: float | None = None
    eval_size: int = 1024

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        raise NotImplementedError

    def eval_batches(self, batch_size: int, split: str = "test", size: int | None = None) -> Iterator[Batch]:
        """A fixed held-out set of ``size`` examples (default ``eval_size``; the same on every call)."""
        if split not in HELD_OUT_SPLITS:
            raise SsmgraphError(
                f"this task has held-out splits {' and '.join(map(repr, HELD_OUT_SPLITS))}, not {split!r}; use --split test"
            )
        generator = torch.Generator().manual_seed(1_000_003 if split == "test" else 1_000_033)
        total = self.eval_size if size is None else size
        # Drawn in chunks of a fixed size, then re-batched: the set is the same at any batch size.
        chunks = (self.sample(min(EVAL_CHUNK, total - start), generator, split) for start in range(0, total, EVAL_CHUNK))
        yield from rebatch(chunks, batch_size)

    def bytes_per_token(self, split: str = "test") -> float | None:
        """UTF-8 bytes per token of a text task's ``split`` (its ``bits_per_byte`` metric is
        ``bits`` divided by this); None for tasks that are not text."""
        return None

    @property
    def input_dtype(self) -> str:
        return "int" if self.vocab_size is not None else "float"

    def label(self) -> str:
        """How errors name the task: ``'bytes' (lm: tokens < 256, ...)``."""
        return f"{self.name!r} ({self.describe()})" if self.name else repr(self.describe())

    def describe(self) -> str:
        """One line for logs: kind, input and target shapes."""
        inputs = f"tokens < {self.vocab_size}" if self.vocab_size is not None else f"features of {self.feature_dim}"
        target = {
            "lm": f"next-token targets < {self.num_classes}",
            "classify": f"{self.num_classes} classes",
            "regress": "a real value",
        }[self.kind]
        return f"{self.kind}: {inputs}, length {self.seq_len}, {target}"
