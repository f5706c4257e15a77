"""``digits``: scikit-learn's 8x8 handwritten digits as 64-step sequences (a tiny sequential MNIST).

The 1,797 images of ``sklearn.datasets.load_digits`` (shipped inside scikit-learn, nothing is
downloaded) are read row by row into sequences of 64 pixel intensities, as Le et al. 2015 read
MNIST pixel by pixel. The train/test split is fixed and stratified: a seeded permutation of
each class gives the test set its share of every digit (360 test / 1,437 train at the default
0.2, the sizes of scikit-learn's ``train_test_split``). scikit-learn is an optional dependency.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import Param, TaskSpec
from ssmgraph.train.tasks.base import Batch, Task

PIXEL_LEVELS = 17
"""load_digits pixels are counts of set pixels in 4x4 blocks of a 32x32 bitmap: 0 .. 16."""


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """(1797, 64) int64 pixels in 0 .. 16 and (1797,) int64 labels, from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SsmgraphError("the digits task needs scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    pixels = torch.as_tensor(data.data).round().long()
    labels = torch.as_tensor(data.target).long()
    return pixels, labels


def stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted (train, test) indices; each class gives the test set its share of ``test_fraction``.

    The test size is ``ceil(n * test_fraction)``, shared among classes by largest remainder
    (as scikit-learn's StratifiedShuffleSplit); within a class a seeded permutation picks."""
    n = labels.numel()
    n_test = math.ceil(n * test_fraction)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n_test / n
    share = exact.floor().long()
    remainder = exact - share
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), int(classes[i])))
    for i in order[: n_test - int(share.sum())]:
        share[i] += 1
    generator = torch.Generator().manual_seed(seed)
    test = []
    for c, k in zip(classes.tolist(), share.tolist()):
        members = (labels == c).nonzero().squeeze(1)
        test.append(members[torch.randperm(members.numel(), generator=generator)[:k]])
    test_idx = torch.cat(test).sort().values
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[test_idx] = True
    return (~is_test).nonzero().squeeze(1), test_idx


class DigitsTask(Task):
    """Classify an 8x8 digit read as a sequence of its 64 pixels, row by row."""

    kind = "classify"
    num_classes = 10
    seq_len = 64

    def __init__(self, tokens: bool = False, test_fraction: float = 0.2, split_seed: int = 0):
        pixels, labels = load_digits_tensors()
        self.tokens = tokens
        if tokens:
            self.vocab_size, self.feature_dim = PIXEL_LEVELS, None
            self.inputs = pixels
        else:
            self.vocab_size, self.feature_dim = None, 1
            self.inputs = (pixels.float() / (PIXEL_LEVELS - 1)).unsqueeze(-1)
        self.labels = labels
        self.train_idx, self.test_idx = stratified_split(labels, test_fraction, split_seed)
        self.eval_size = self.test_idx.numel()

    def split_indices(self, split: str) -> Tensor:
        if split == "train":
            return self.train_idx
        if split == "test":
            return self.test_idx
        raise SsmgraphError(f"the digits task has splits 'train' and 'test', not {split!r}")

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        pool = self.split_indices(split)
        idx = pool[torch.randint(0, pool.numel(), (batch_size,), generator=generator)]
        return Batch(self.inputs[idx], self.labels[idx])

    def eval_batches(self, batch_size: int, split: str = "test", size: int | None = None) -> Iterator[Batch]:
        """Every example of the split, in order (the same on every call; ``size`` is ignored:
        the test split is fixed)."""
        pool = self.split_indices(split)
        for start in range(0, pool.numel(), batch_size):
            idx = pool[start : start + batch_size]
            yield Batch(self.inputs[idx], self.labels[idx])


DIGITS = TaskSpec(
    name="digits",
    doc="scikit-learn's 8x8 handwritten digits as 64-step pixel sequences; 10 classes, fixed stratified test split.",
    params=(
        Param("tokens", bool, False, "feed pixel intensities as tokens 0 .. 16 instead of floats in [0, 1]"),
        Param(
            "test_fraction",
            float,
            0.2,
            "share of each class held out for testing (0.2: 1437 train / 360 test)",
            min=0.05,
            max=0.5,
        ),
        Param("split_seed", int, 0, "seed of the fixed train/test split"),
    ),
    factory=DigitsTask,
    reference=(
        "Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits (sklearn.datasets.load_digits); "
        "Le, Jaitly & Hinton 2015 (pixel-by-pixel MNIST)"
    ),
)


@hookimpl
def ssmgraph_tasks() -> list[TaskSpec]:
    return [DIGITS]
