"""Synthetic tasks, generated on the fly from the trainer's ``torch.Generator``.

Each probes one ability of a sequence model, following the paper that introduced it:

- ``copying``: remember a fixed-position prefix over a long delay (Arjovsky et al. 2016).
- ``selective_copying``: remember tokens scattered among blanks (Gu & Dao 2023, Mamba §4.1).
- ``induction_heads``: recall the token that followed a trigger (Olsson et al. 2022).
- ``mqar``: multi-query associative recall of key-value pairs (Arora et al. 2023, Zoology).
- ``adding``: add the two marked numbers of a long sequence (Hochreiter & Schmidhuber 1997).
- ``parity``: the XOR of a bit string (a regular language that needs exact counting mod 2).
- ``listops``: evaluate a nested MAX/MIN/MED/SM expression (Nangia & Bowman 2018; LRA).

Token conventions of the ``lm`` tasks: the targets say what the model must output *at* each
position (the trainer does not shift them) and are ``IGNORE`` where nothing is scored. Special
tokens (blank, marker, trigger) are documented per task; docs/tasks.md shows an example of each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import Param, TaskSpec
from ssmgraph.train.tasks.base import IGNORE, Batch, Task, require
from ssmgraph.train.tasks.listops import ListOpsTask


def _distinct(batch: int, k: int, n: int, generator: torch.Generator) -> Tensor:
    """(batch, k) distinct integers from [0, n) per row, in random order."""
    return torch.rand(batch, n, generator=generator).argsort(dim=-1)[:, :k]


def _sorted_distinct(batch: int, k: int, n: int, generator: torch.Generator) -> Tensor:
    """(batch, k) distinct integers from [0, n) per row, increasing."""
    return _distinct(batch, k, n, generator).sort(dim=-1).values


def _rows(batch: int) -> Tensor:
    return torch.arange(batch).unsqueeze(1)


# ---- copying -------------------------------------------------------------------------------------
class CopyingTask(Task):
    """Copying memory (Arjovsky, Shah & Bengio 2016, §4.1; Gu et al. 2020, HiPPO).

    Layout of a sequence of length ``L = T + 2n`` (Arjovsky's ``T`` is the delay)::

        positions 0 .. n-1         n data tokens, uniform from 1 .. vocab-2
        positions n .. L-n-2       blank (0)
        position  L-n-1            the marker (vocab-1): "start copying"
        positions L-n .. L-1       blank; the targets here are the n data tokens in order

    Every other position is ``IGNORE``: Arjovsky et al. also score the blanks the model must
    emit, which only dilutes the loss; here loss and accuracy are over the copied tokens alone.
    """

    kind = "lm"

    def __init__(self, seq_len: int = 120, n_memorize: int = 10, vocab: int = 10):
        need = 2 * n_memorize + 1
        require(
            seq_len >= need,
            f"copying: seq_len {seq_len} is too short for n_memorize {n_memorize} (needs 2 * n_memorize + 1 = {need})",
        )
        self.seq_len, self.n_memorize = seq_len, n_memorize
        self.vocab_size = self.num_classes = vocab
        self.blank, self.marker = 0, vocab - 1

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        n, length = self.n_memorize, self.seq_len
        data = torch.randint(1, self.vocab_size - 1, (batch_size, n), generator=generator)
        inputs = torch.full((batch_size, length), self.blank, dtype=torch.long)
        inputs[:, :n] = data
        inputs[:, length - n - 1] = self.marker
        targets = torch.full((batch_size, length), IGNORE, dtype=torch.long)
        targets[:, length - n :] = data
        return Batch(inputs, targets)


# ---- selective copying ---------------------------------------------------------------------------
class SelectiveCopyingTask(Task):
    """Selective copying (Gu & Dao 2023, Mamba §4.1 and Fig. 2; after Jing et al. 2019).

    The first ``L - n`` positions are blank (0) except for ``n`` data tokens (uniform from
    1 .. vocab-2) at random distinct positions; the last ``n`` positions are markers
    (vocab-1). At the i-th marker the model must output the i-th data token: solving it
    requires selecting content, since the positions carry no information.
    """

    kind = "lm"

    def __init__(self, seq_len: int = 256, n_memorize: int = 16, vocab: int = 16):
        need = 2 * n_memorize
        require(seq_len >= need, f"selective_copying: seq_len {seq_len} is too short for n_memorize {n_memorize} (needs {need})")
        self.seq_len, self.n_memorize = seq_len, n_memorize
        self.vocab_size = self.num_classes = vocab
        self.blank, self.marker = 0, vocab - 1

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        n, length = self.n_memorize, self.seq_len
        data = torch.randint(1, self.vocab_size - 1, (batch_size, n), generator=generator)
        positions = _sorted_distinct(batch_size, n, length - n, generator)
        inputs = torch.full((batch_size, length), self.blank, dtype=torch.long)
        inputs[_rows(batch_size), positions] = data
        inputs[:, length - n :] = self.marker
        targets = torch.full((batch_size, length), IGNORE, dtype=torch.long)
        targets[:, length - n :] = data
        return Batch(inputs, targets)


# ---- induction heads -----------------------------------------------------------------------------
class InductionHeadsTask(Task):
    """Induction heads (Olsson et al. 2022; the synthetic version of Gu & Dao 2023, Mamba §4.1).

    Tokens uniform from 0 .. vocab-2; the trigger (vocab-1) appears exactly twice: once at a
    random position p <= L-3, and at the last position L-1. The only target is at L-1: the
    token at p+1 (the one that followed the trigger). Chance accuracy is 1 / (vocab-1).
    """

    kind = "lm"

    def __init__(self, seq_len: int = 256, vocab: int = 16):
        self.seq_len = seq_len
        self.vocab_size = self.num_classes = vocab
        self.trigger = vocab - 1

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        length, rows = self.seq_len, torch.arange(batch_size)
        inputs = torch.randint(0, self.trigger, (batch_size, length), generator=generator)
        p = torch.randint(0, length - 2, (batch_size,), generator=generator)
        inputs[rows, p] = self.trigger
        inputs[:, -1] = self.trigger
        targets = torch.full((batch_size, length), IGNORE, dtype=torch.long)
        targets[:, -1] = inputs[rows, p + 1]
        return Batch(inputs, targets)


# ---- multi-query associative recall --------------------------------------------------------------
class MQARTask(Task):
    """Multi-query associative recall (Arora et al. 2023, Zoology §3; their ``multiquery_ar``).

    ``k1 v1 k2 v2 ... kn vn`` (distinct keys from 1 .. K, distinct values from K+1 .. vocab-1,
    with K = (vocab-1) // 2), then a query region of pads (0) where ``n_queries`` distinct keys
    sit at random even offsets. The target at each query is the value paired with that key;
    the value is *not* written after the query, so even a bidirectional model must recall it.
    Zoology draws the query offsets from a power law (most queries near the pairs); here they
    are uniform over the region, which makes the recall distances longer on average.
    """

    kind = "lm"

    def __init__(self, seq_len: int = 128, n_pairs: int = 16, n_queries: int | None = None, vocab: int = 128):
        n_queries = n_pairs if n_queries is None else n_queries
        self.n_keys = (vocab - 1) // 2
        n_values = vocab - 1 - self.n_keys
        require(n_queries <= n_pairs, f"mqar: n_queries {n_queries} is more than n_pairs {n_pairs} (queries ask distinct keys)")
        require(
            n_pairs <= self.n_keys,
            f"mqar: n_pairs {n_pairs} needs as many distinct keys, but vocab {vocab} has {self.n_keys} "
            f"(raise vocab to at least {2 * n_pairs + 1})",
        )
        slots = (seq_len - 2 * n_pairs) // 2
        require(
            slots >= n_queries,
            f"mqar: seq_len {seq_len} is too short: {n_pairs} pairs take {2 * n_pairs} positions and {n_queries} queries "
            f"need {2 * n_queries} more (seq_len >= {2 * (n_pairs + n_queries)})",
        )
        assert n_values >= n_pairs
        self.seq_len, self.n_pairs, self.n_queries = seq_len, n_pairs, n_queries
        self.vocab_size = self.num_classes = vocab
        self.pad = 0

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        n, q, length = self.n_pairs, self.n_queries, self.seq_len
        rows = _rows(batch_size)
        keys = 1 + _distinct(batch_size, n, self.n_keys, generator)
        values = 1 + self.n_keys + _distinct(batch_size, n, self.vocab_size - 1 - self.n_keys, generator)
        asked = _distinct(batch_size, q, n, generator)  # which pairs are queried, in query order
        slots = (length - 2 * n) // 2
        where = 2 * n + 2 * _distinct(batch_size, q, slots, generator)  # query positions, in query order
        inputs = torch.full((batch_size, length), self.pad, dtype=torch.long)
        inputs[:, 0 : 2 * n : 2] = keys
        inputs[:, 1 : 2 * n : 2] = values
        inputs[rows, where] = keys[rows, asked]
        targets = torch.full((batch_size, length), IGNORE, dtype=torch.long)
        targets[rows, where] = values[rows, asked]
        return Batch(inputs, targets)


# ---- adding problem ------------------------------------------------------------------------------
class AddingTask(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997, experiment 4; Arjovsky et al. 2016, §4.2).

    Inputs (B, L, 2): channel 0 uniform in [0, 1), channel 1 zero except two ones, the first
    in the first half and the second in the second half (Arjovsky et al.'s version). The
    target is the sum of the two marked values. ``tolerance`` 0.04 is Hochreiter &
    Schmidhuber's criterion: a sequence counts as solved when the absolute error is below 0.04.
    Always predicting the mean 1.0 gives MSE 1/6 ~ 0.167, the baseline of Arjovsky et al.
    """

    kind = "regress"
    feature_dim = 2
    tolerance = 0.04

    def __init__(self, seq_len: int = 100):
        self.seq_len = seq_len

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        length, rows = self.seq_len, torch.arange(batch_size)
        half = length // 2
        values = torch.rand(batch_size, length, generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, length, (batch_size,), generator=generator)
        markers = torch.zeros(batch_size, length)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        targets = values[rows, first] + values[rows, second]
        return Batch(torch.stack([values, markers], dim=-1), targets)


# ---- parity --------------------------------------------------------------------------------------
class ParityTask(Task):
    """Parity: a uniform random bit string (tokens 0 and 1); the label is the XOR of all bits.

    A classic that defeats models without exact state tracking (Minsky & Papert 1969; Hahn
    2020 for self-attention; Delétang et al. 2023 "Neural Networks and the Chomsky Hierarchy",
    where parity is a regular task). Labels are balanced: chance accuracy is 50%.
    """

    kind = "classify"
    vocab_size = 2
    num_classes = 2

    def __init__(self, seq_len: int = 32):
        self.seq_len = seq_len

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        bits = torch.randint(0, 2, (batch_size, self.seq_len), generator=generator)
        return Batch(bits, bits.sum(dim=1) % 2)


# ---- specs ---------------------------------------------------------------------------------------
def _seq_len(default: int, low: int, doc: str = "sequence length") -> Param:
    return Param("seq_len", int, default, doc, min=low, max=1_000_000)


COPYING = TaskSpec(
    name="copying",
    doc="Copying memory: n tokens, a long delay of blanks and a marker, then reproduce the tokens (lm; scored on the copies).",
    params=(
        _seq_len(120, 3, "total length L = delay T + 2 * n_memorize (Arjovsky et al.: T = 100 .. 2000)"),
        Param("n_memorize", int, 10, "tokens to copy (Arjovsky et al.: 10)", min=1, max=100_000),
        Param(
            "vocab", int, 10, "vocabulary: blank 0, data 1 .. vocab-2, marker vocab-1 (Arjovsky et al.: 10)", min=3, max=1_000_000
        ),
    ),
    factory=CopyingTask,
    reference="Arjovsky, Shah & Bengio 2016, Unitary Evolution Recurrent Neural Networks (§4.1 copying memory)",
)

SELECTIVE_COPYING = TaskSpec(
    name="selective_copying",
    doc="Selective copying: n tokens at random positions among blanks, then n markers; output the tokens in order (lm).",
    params=(
        _seq_len(256, 2, "total length including the n_memorize markers (Mamba: 4096)"),
        Param("n_memorize", int, 16, "tokens to memorize (Mamba: 16)", min=1, max=100_000),
        Param("vocab", int, 16, "vocabulary: blank 0, data 1 .. vocab-2, marker vocab-1 (Mamba: 16)", min=3, max=1_000_000),
    ),
    factory=SelectiveCopyingTask,
    reference="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (§4.1.1); Jing et al. 2019, Gated Orthogonal Recurrent Units",
)

INDUCTION_HEADS = TaskSpec(
    name="induction_heads",
    doc="Induction heads: a trigger token, the token after it, noise, the trigger again; output that token (lm; last position only).",
    params=(
        _seq_len(256, 3, "sequence length (Mamba trains on 256 and tests up to 1M)"),
        Param("vocab", int, 16, "vocabulary: random tokens 0 .. vocab-2, trigger vocab-1 (Mamba: 16)", min=3, max=1_000_000),
    ),
    factory=InductionHeadsTask,
    reference="Olsson et al. 2022, In-context Learning and Induction Heads; Gu & Dao 2023, Mamba (§4.1.2)",
)

MQAR = TaskSpec(
    name="mqar",
    doc="Multi-query associative recall: key-value pairs, then queried keys; output each key's value (lm; scored at the queries).",
    params=(
        _seq_len(128, 4, "sequence length (Zoology: 64 .. 512)"),
        Param("n_pairs", int, 16, "key-value pairs (Zoology: 4 .. 64)", min=1, max=100_000),
        Param("n_queries", int, None, "distinct keys queried; null: all n_pairs (as Zoology)", min=1, max=100_000, nullable=True),
        Param("vocab", int, 128, "vocabulary: pad 0, keys 1 .. (vocab-1)//2, values above (Zoology: 8192)", min=3, max=1_000_000),
    ),
    factory=MQARTask,
    reference="Arora et al. 2023, Zoology: Measuring and Improving Recall in Efficient Language Models (MQAR)",
)

ADDING = TaskSpec(
    name="adding",
    doc="Adding problem: (value, marker) pairs; regress the sum of the two marked values (tolerance 0.04).",
    params=(_seq_len(100, 2, "sequence length T (Arjovsky et al.: 100 .. 750)"),),
    factory=AddingTask,
    reference="Hochreiter & Schmidhuber 1997, Long Short-Term Memory (experiment 4); Arjovsky, Shah & Bengio 2016 (§4.2)",
)

PARITY = TaskSpec(
    name="parity",
    doc="Parity: classify a random bit string by the XOR of its bits (2 classes).",
    params=(_seq_len(32, 1, "number of bits"),),
    factory=ParityTask,
    reference="Minsky & Papert 1969, Perceptrons; Hahn 2020, Theoretical Limitations of Self-Attention; Delétang et al. 2023",
)

LISTOPS = TaskSpec(
    name="listops",
    doc="ListOps: evaluate a nested MAX/MIN/MED/SM expression over digits (10 classes), as in Long Range Arena.",
    params=(
        _seq_len(512, 4, "maximum expression length, padded to it (LRA: 2000)"),
        Param(
            "min_len",
            int,
            None,
            "minimum expression length; null: seq_len // 4 (LRA: 500 for 2000)",
            min=1,
            max=1_000_000,
            nullable=True,
        ),
        Param(
            "max_depth", int, 10, "tree depth counting the digits: at most max_depth-1 nested operators (LRA: 10)", min=2, max=50
        ),
        Param("max_args", int, 10, "most arguments of one operator (LRA: 10)", min=2, max=100),
    ),
    factory=ListOpsTask,
    reference="Nangia & Bowman 2018, ListOps; Tay et al. 2021, Long Range Arena (listops.py generator)",
)

SPECS: tuple[TaskSpec, ...] = (COPYING, SELECTIVE_COPYING, INDUCTION_HEADS, MQAR, ADDING, PARITY, LISTOPS)


@hookimpl
def ssmgraph_tasks() -> list[TaskSpec]:
    return list(SPECS)
