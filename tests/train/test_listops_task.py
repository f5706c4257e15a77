"""The ListOps task: each label is the value of its expression, checked against an independent
reader written here (a stack machine over the token ids, not the generator's code), so a generator
bug cannot hide behind a matching bug in the check; also LRA's median and sum, the spread of the
labels, and the error when no tree fits.
"""

from __future__ import annotations

import statistics

import pytest
from task_helpers import gen, small

from ssmgraph.errors import SsmgraphError
from ssmgraph.train.tasks import listops


def evaluate_listops(tokens: list[int]) -> tuple[int, int, int]:
    """An independent ListOps reader: a stack machine over the token ids.

    Returns (value, deepest operator nesting, most arguments of one operator)."""
    words = [listops.LISTOPS_VOCAB[t] for t in tokens]
    stack: list[tuple[str, list[int]]] = []
    result = None
    deepest = widest = 0
    for word in words:
        if word.startswith("["):
            stack.append((word, []))
            deepest = max(deepest, len(stack))
        elif word == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            assert len(args) >= 2
            value = {
                "[MAX": max,
                "[MIN": min,
                "[MED": lambda a: int(statistics.median(a)),
                "[SM": lambda a: sum(a) % 10,
            }[op](args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            assert word.isdigit() and stack, "a digit outside an operator"
            stack[-1][1].append(int(word))
    assert not stack and result is not None, "unbalanced brackets"
    return result, deepest, widest


def test_listops_label_is_the_value_of_the_expression():
    task = small("listops")
    batch = task.sample(48, gen(0))
    depths = set()
    for x, label in zip(batch.inputs.tolist(), batch.targets.tolist()):
        length = next((i for i, t in enumerate(x) if t == 0), len(x))
        assert all(t == 0 for t in x[length:]), "padding only at the end"
        assert 20 <= length <= 96
        value, deepest, widest = evaluate_listops(x[:length])
        assert value == label
        assert deepest <= 5 - 1 and widest <= 4
        depths.add(deepest)
    assert len(depths) > 1
    assert listops.listops_text([11, 3, 10, 12, 5, 8, 15, 1, 15, 0, 0]) == "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert evaluate_listops([11, 3, 10, 12, 5, 8, 15, 1, 15]) == (9, 2, 4)


def test_listops_median_and_sum_follow_lra():
    assert listops.listops_apply(2, [1, 2, 3, 4]) == 2  # int(np.median) floors 2.5
    assert listops.listops_apply(2, [7, 1, 4]) == 4
    assert listops.listops_apply(3, [9, 8, 7]) == 4
    assert listops.listops_apply(0, [3, 9, 1]) == 9 and listops.listops_apply(1, [3, 9, 1]) == 1


def test_listops_default_labels_spread_over_the_classes():
    task = listops.ListOpsTask(seq_len=256)
    labels = task.sample(64, gen(0)).targets
    assert len(labels.unique()) >= 6


def test_listops_gives_up_with_a_clear_error_when_no_tree_fits():
    task = listops.ListOpsTask(seq_len=200, min_len=190, max_depth=2, max_args=3)
    task.max_tries = 50
    with pytest.raises(SsmgraphError, match="lower min_len"):
        task.sample(1, gen(0))
