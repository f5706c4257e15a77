"""ListOps (Nangia & Bowman 2018) as Long Range Arena generates it: evaluate a nested
MAX/MIN/MED/SM expression over digits. The ``listops`` spec is in ssmgraph.train.tasks.synthetic.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from ssmgraph.train.tasks.base import Batch, Task, TaskOptionError, require

LISTOPS_PAD = 0
LISTOPS_DIGIT0 = 1  # digit d is token d + 1
LISTOPS_OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
LISTOPS_OP0 = 11  # [MAX 11, [MIN 12, [MED 13, [SM 14
LISTOPS_CLOSE = 15
LISTOPS_VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + LISTOPS_OPERATORS + ("]",)
"""Token id -> text: 0 pad, 1..10 the digits 0..9, 11 [MAX, 12 [MIN, 13 [MED, 14 [SM, 15 ]."""


def listops_apply(op: int, args: list[int]) -> int:
    """The value of operator ``op`` (0 MAX, 1 MIN, 2 MED, 3 SM) on its arguments, as in LRA.

    MED is LRA's ``int(np.median(args))``: the middle value, or for an even count the floor of
    the mean of the two middle values; SM is the sum modulo 10."""
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    return sum(args) % 10


class _TooLong(Exception):
    pass


class ListOpsTask(Task):
    """ListOps (Nangia & Bowman 2018) as generated for Long Range Arena (Tay et al. 2021).

    The tree generator is LRA's ``listops.py``: below ``max_depth`` a node is an operator with
    probability 0.25 (else a digit 0-9), an operator takes 2 .. ``max_args`` arguments, and
    trees are kept when their token count lies in [``min_len``, ``seq_len``] (LRA: depth 10,
    10 arguments, 500 .. 2000 tokens). The root is always an operator (a one-digit tree is
    never kept anyway). Tokens (see ``LISTOPS_VOCAB``) are right-padded with PAD (0) to
    ``seq_len``; the label is the value of the expression, 0 .. 9.
    """

    kind = "classify"
    vocab_size = len(LISTOPS_VOCAB)
    num_classes = 10
    VALUE_P = 0.25

    def __init__(self, seq_len: int = 512, min_len: int | None = None, max_depth: int = 10, max_args: int = 10):
        min_len = seq_len // 4 if min_len is None else min_len
        require(min_len <= seq_len, f"listops: min_len {min_len} is above seq_len {seq_len}")
        require(seq_len >= 4, f"listops: seq_len {seq_len} is too short for one operator with two arguments (4 tokens)")
        self.seq_len, self.min_len, self.max_depth, self.max_args = seq_len, min_len, max_depth, max_args
        self.max_tries = 100_000

    def _tree(self, rng: random.Random, depth: int, out: list[int], force_op: bool = False) -> int:
        """Append one subtree's tokens to ``out``; return its value. Raise _TooLong past seq_len."""
        if not force_op and (depth >= self.max_depth or rng.random() > self.VALUE_P):
            value = rng.randrange(10)
            out.append(LISTOPS_DIGIT0 + value)
            if len(out) > self.seq_len:
                raise _TooLong
            return value
        op = rng.randrange(len(LISTOPS_OPERATORS))
        out.append(LISTOPS_OP0 + op)
        args = [self._tree(rng, depth + 1, out) for _ in range(rng.randint(2, self.max_args))]
        out.append(LISTOPS_CLOSE)
        if len(out) > self.seq_len:
            raise _TooLong
        return listops_apply(op, args)

    def expression(self, rng: random.Random) -> tuple[list[int], int]:
        """One expression of ``min_len`` .. ``seq_len`` tokens and its value."""
        for _ in range(self.max_tries):
            tokens: list[int] = []
            try:
                value = self._tree(rng, 1, tokens, force_op=True)
            except _TooLong:
                continue
            if len(tokens) >= self.min_len:
                return tokens, value
        raise TaskOptionError(
            f"listops: no expression of {self.min_len} .. {self.seq_len} tokens in {self.max_tries} tries "
            f"with max_depth {self.max_depth} and max_args {self.max_args}; lower min_len or raise max_depth/max_args"
        )

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        inputs = torch.full((batch_size, self.seq_len), LISTOPS_PAD, dtype=torch.long)
        labels = torch.empty(batch_size, dtype=torch.long)
        for i in range(batch_size):
            tokens, labels[i] = self.expression(rng)
            inputs[i, : len(tokens)] = torch.tensor(tokens)
        return Batch(inputs, labels)


def listops_text(tokens: Tensor | list[int]) -> str:
    """Render ListOps token ids as text, without the padding: ``[MAX 2 9 [MIN 4 7 ] 0 ]``."""
    ids = tokens.tolist() if isinstance(tokens, Tensor) else tokens
    return " ".join(LISTOPS_VOCAB[t] for t in ids if t != LISTOPS_PAD)
