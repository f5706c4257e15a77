"""The synthetic training tasks: each (ListOps included) delivers batches of the declared shapes
and ranges, fixed by the generator, scored fully by the trainer's losses when predicted perfectly.

Copying, selective copying, induction heads, MQAR, adding and parity are each checked against an
independent solver written here (reading the answer off the inputs by other means than the
generator), so a generator bug cannot hide behind a matching bug in the check. ListOps has its own
file (test_listops_task.py).
"""

from __future__ import annotations

import functools
import operator

import pytest
import torch
from task_helpers import SMALL, all_specs, check_batch, gen, small

from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks.base import IGNORE


# ---- what every task promises ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL))
def test_synthetic_batches_have_the_declared_shapes_and_ranges(name):
    task = small(name)
    check_batch(task, task.sample(16, gen(1)), 16)
    default = all_specs()[name].factory(**all_specs()[name].defaults())
    check_batch(default, default.sample(4, gen(2)), 4)


@pytest.mark.parametrize("name", list(SMALL))
def test_synthetic_batches_are_determined_by_the_generator(name):
    task = small(name)
    a, b, c = task.sample(8, gen(5)), task.sample(8, gen(5)), task.sample(8, gen(6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not (torch.equal(a.inputs, c.inputs) and torch.equal(a.targets, c.targets))
    g = gen(5)
    first, second = task.sample(8, g), task.sample(8, g)
    assert not torch.equal(first.inputs, second.inputs), "a generator moves on between batches"
    held_out = [b.inputs for b in task.eval_batches(5, "test")]
    again = [b.inputs for b in task.eval_batches(5, "test")]
    assert sum(len(h) for h in held_out) == task.eval_size
    assert all(torch.equal(u, v) for u, v in zip(held_out, again)), "the held-out set is fixed"


@pytest.mark.parametrize("name", list(SMALL))
def test_the_held_out_set_does_not_depend_on_the_batch_size(name):
    task = small(name)
    sets = [[b for b in task.eval_batches(batch_size, "test", 70)] for batch_size in (3, 16, 70)]  # 70: across a chunk
    assert [len(b) for b in sets[0]] == [3] * 23 + [1]
    for batches in sets[1:]:
        for field in ("inputs", "targets"):
            assert torch.equal(torch.cat([getattr(b, field) for b in batches]), torch.cat([getattr(b, field) for b in sets[0]]))


@pytest.mark.parametrize("name", list(SMALL))
def test_a_perfect_prediction_scores_full_accuracy_with_the_trainer_losses(name):
    """The targets line up with what the trainer scores: position t's logits against targets[:, t]."""
    task = small(name)
    batch = task.sample(6, gen(3))
    if task.kind == "lm":
        y = batch.targets.clamp(min=0)
        output = torch.nn.functional.one_hot(y, task.num_classes).float() * 50
    elif task.kind == "classify":
        output = torch.nn.functional.one_hot(batch.targets, task.num_classes).float() * 50
    else:
        output = batch.targets.unsqueeze(1)
    sums = batch_sums(task.kind, output, batch.targets, task.tolerance)
    assert int(sums.correct) == int(sums.count) > 0
    assert float(sums.loss) < 1e-6


# ---- independent solvers --------------------------------------------------------------------------
def test_copying_targets_are_the_first_tokens_after_the_marker():
    task = small("copying")
    n, L = 5, 30
    batch = task.sample(32, gen(0))
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert all(1 <= t <= 5 for t in x[:n])  # data tokens 1 .. vocab-2
        marker_at = [i for i, t in enumerate(x) if t == 6]
        assert marker_at == [L - n - 1]
        assert all(t == 0 for i, t in enumerate(x) if i >= n and i != L - n - 1)
        scored = [(i, t) for i, t in enumerate(y) if t != IGNORE]
        assert [i for i, _ in scored] == list(range(marker_at[0] + 1, L))
        assert [t for _, t in scored] == x[:n]


def test_selective_copying_targets_are_the_non_blank_tokens_in_order():
    task = small("selective_copying")
    n, marker = 6, 8
    batch = task.sample(64, gen(0))
    spread = set()
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        context = x[: len(x) - n]
        assert x[len(x) - n :] == [marker] * n
        tokens = [t for t in context if t != 0]
        assert len(tokens) == n and marker not in tokens
        scored = [t for t in y if t != IGNORE]
        assert scored == tokens
        assert [i for i, t in enumerate(y) if t != IGNORE] == list(range(len(x) - n, len(x)))
        spread.update(i for i, t in enumerate(context) if t != 0)
    assert len(spread) > len(batch.inputs[0]) // 2, "positions are random, not fixed"


def test_induction_heads_target_is_the_token_after_the_first_trigger():
    task = small("induction_heads")
    trigger = 5
    batch = task.sample(64, gen(0))
    firsts = set()
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        where = [i for i, t in enumerate(x) if t == trigger]
        assert len(where) == 2 and where[1] == len(x) - 1
        first = where[0]
        firsts.add(first)
        assert y[-1] == x[first + 1] != trigger
        assert all(t == IGNORE for t in y[:-1])
    assert len(firsts) > 5


def test_mqar_answers_are_the_values_paired_with_the_queried_keys():
    task = small("mqar")
    n, q = 8, 5
    batch = task.sample(64, gen(0))
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert not set(keys) & set(values) and 0 not in keys
        memory = dict(zip(keys, values))
        region = x[2 * n :]
        queries = [(i, t) for i, t in enumerate(region) if t != 0]
        assert len(queries) == q and all(i % 2 == 0 for i, _ in queries)
        assert len({t for _, t in queries}) == q and all(t in memory for _, t in queries)
        assert not set(region) & set(values), "the answers are not written in the input"
        scored = {i: t for i, t in enumerate(y) if t != IGNORE}
        assert scored == {2 * n + i: memory[t] for i, t in queries}


def test_adding_target_is_the_sum_of_the_two_marked_values():
    task = small("adding")
    assert task.tolerance == 0.04 and task.feature_dim == 2 and task.vocab_size is None
    batch = task.sample(64, gen(0))
    L = 21
    for x, y in zip(batch.inputs, batch.targets):
        values, markers = x[:, 0], x[:, 1]
        assert 0 <= float(values.min()) and float(values.max()) < 1
        marked = markers.nonzero().squeeze(1).tolist()
        assert len(marked) == 2 and set(markers.unique().tolist()) == {0.0, 1.0}
        assert marked[0] < L // 2 <= marked[1]
        assert float(y) == pytest.approx(float(values[marked[0]]) + float(values[marked[1]]), abs=1e-6)


def test_parity_label_is_the_xor_of_the_bits():
    task = small("parity")
    batch = task.sample(200, gen(0))
    assert set(batch.inputs.unique().tolist()) == {0, 1}
    for bits, label in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert label == functools.reduce(operator.xor, bits)
    assert 60 < int(batch.targets.sum()) < 140, "labels are balanced"
