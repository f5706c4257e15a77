"""The built-in training tasks: each delivers what it promises.

Every synthetic task is checked against an independent solver written here (reading the answer
off the inputs by other means than the generator), so a generator bug cannot hide behind a
matching bug in the check.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import operator
import statistics
from pathlib import Path

import pluggy
import pytest
import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.registry import hookspecs
from ssmgraph.registry.loading import builtin_entry_points
from ssmgraph.registry.specs import TaskSpec
from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks import digits as digits_mod
from ssmgraph.train.tasks import listops, text
from ssmgraph.train.tasks.base import IGNORE, Task

EXPECTED = ["copying", "selective_copying", "induction_heads", "mqar", "adding", "parity", "listops", "digits", "bytes"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BUILTIN_TASK_PLUGINS = tuple(ep.value for ep in builtin_entry_points() if ep.value.startswith("ssmgraph.train.tasks."))


@functools.lru_cache(maxsize=1)
def all_specs() -> dict[str, TaskSpec]:
    """The specs as a host sees them: through a pluggy manager with the ssmgraph hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_TASK_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    specs = [spec for result in pm.hook.ssmgraph_tasks() for spec in result]
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in specs}


# Small but non-trivial options for the synthetic tasks (fast to generate, every branch hit).
SMALL = {
    "copying": {"seq_len": 30, "n_memorize": 5, "vocab": 7},
    "selective_copying": {"seq_len": 40, "n_memorize": 6, "vocab": 9},
    "induction_heads": {"seq_len": 24, "vocab": 6},
    "mqar": {"seq_len": 48, "n_pairs": 8, "n_queries": 5, "vocab": 40},
    "adding": {"seq_len": 21},
    "parity": {"seq_len": 13},
    "listops": {"seq_len": 96, "min_len": 20, "max_depth": 5, "max_args": 4},
}


def small(name: str) -> Task:
    return all_specs()[name].factory(**{**all_specs()[name].defaults(), **SMALL[name]})


# ---- registration ----------------------------------------------------------------------------------
def test_hook_lists_every_builtin_task_once():
    assert sorted(all_specs()) == sorted(EXPECTED)
    assert sorted(BUILTIN_TASK_PLUGINS) == sorted(("ssmgraph.train.tasks.synthetic", "ssmgraph.train.tasks.digits", "ssmgraph.train.tasks.text"))


@pytest.mark.parametrize("name", EXPECTED)
def test_spec_is_well_formed(name):
    spec = all_specs()[name]
    assert spec.validate() == []
    assert spec.reference and spec.doc
    assert all(not p.required for p in spec.params), "every option has a default"
    for p in spec.params:
        assert p.check(p.default)[1] is None, (p.name, p.default)
    assert spec.to_json()["name"] == name


# ---- what every task promises ------------------------------------------------------------------------
def check_batch(task: Task, batch, batch_size: int) -> None:
    x, y = batch.inputs, batch.targets
    assert x.shape[:2] == (batch_size, task.seq_len)
    if task.vocab_size is not None:
        assert x.dtype == torch.int64 and x.dim() == 2 and task.feature_dim is None
        assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
    else:
        assert x.dtype == torch.float32 and x.shape == (batch_size, task.seq_len, task.feature_dim)
    if task.kind == "lm":
        assert y.shape == (batch_size, task.seq_len) and y.dtype == torch.int64
        scored = y[y != IGNORE]
        assert scored.numel() > 0 and 0 <= int(scored.min()) and int(scored.max()) < task.num_classes
    elif task.kind == "classify":
        assert y.shape == (batch_size,) and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) < task.num_classes
    else:
        assert y.shape == (batch_size,) and y.dtype == torch.float32


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


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("copying", {"seq_len": 10, "n_memorize": 5}, "too short"),
        ("selective_copying", {"seq_len": 10, "n_memorize": 6}, "too short"),
        ("mqar", {"n_pairs": 8, "n_queries": 9}, "n_queries"),
        ("mqar", {"n_pairs": 40, "vocab": 64}, "raise vocab"),
        ("mqar", {"seq_len": 40, "n_pairs": 16}, "too short"),
        ("listops", {"seq_len": 64, "min_len": 100}, "min_len"),
    ],
)
def test_options_that_do_not_fit_together_are_refused(name, options, match):
    spec = all_specs()[name]
    with pytest.raises(SsmgraphError, match=match):
        spec.factory(**{**spec.defaults(), **options})


def test_listops_gives_up_with_a_clear_error_when_no_tree_fits():
    task = listops.ListOpsTask(seq_len=200, min_len=190, max_depth=2, max_args=3)
    task.max_tries = 50
    with pytest.raises(SsmgraphError, match="lower min_len"):
        task.sample(1, gen(0))


# ---- digits -------------------------------------------------------------------------------------------
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")


@pytest.fixture(scope="module")
def digits() -> Task:
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed")
    return all_specs()["digits"].factory()


@needs_sklearn
def test_digits_split_is_fixed_stratified_and_disjoint(digits):
    train, test = digits.train_idx, digits.test_idx
    assert (train.numel(), test.numel()) == (1437, 360)
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    labels = digits.labels
    for c in range(10):
        total = int((labels == c).sum())
        in_test = int((labels[test] == c).sum())
        assert abs(in_test - total * 360 / 1797) < 1, (c, in_test, total)
    same = digits_mod.DigitsTask()
    other = digits_mod.DigitsTask(split_seed=1)
    assert torch.equal(same.test_idx, test) and not torch.equal(other.test_idx, test)


@needs_sklearn
def test_digits_inputs_are_pixel_sequences(digits):
    assert digits.kind == "classify" and digits.num_classes == 10 and digits.seq_len == 64
    batch = digits.sample(32, gen(0))
    check_batch(digits, batch, 32)
    assert batch.inputs.shape == (32, 64, 1) and 0 <= float(batch.inputs.min()) and float(batch.inputs.max()) <= 1
    assert float(batch.inputs.max()) == 1.0
    tokens = digits_mod.DigitsTask(tokens=True)
    tb = tokens.sample(32, gen(0))
    check_batch(tokens, tb, 32)
    assert tokens.vocab_size == 17 and int(tb.inputs.max()) <= 16
    assert torch.equal(tb.targets, batch.targets), "the same generator draws the same examples"
    torch.testing.assert_close(tb.inputs.float() / 16, batch.inputs.squeeze(-1))


@needs_sklearn
def test_digits_training_batches_come_from_the_train_split(digits):
    batch = digits.sample(64, gen(3))
    train = set(digits.train_idx.tolist())
    flat = digits.inputs.squeeze(-1)
    for x, y in zip(batch.inputs.squeeze(-1), batch.targets):
        rows = ((flat == x).all(dim=1) & (digits.labels == y)).nonzero().squeeze(1).tolist()
        assert any(r in train for r in rows)
    assert torch.equal(batch.inputs, digits.sample(64, gen(3)).inputs)


@needs_sklearn
def test_digits_eval_covers_the_whole_test_split_in_order(digits):
    batches = list(digits.eval_batches(100, "test", size=7))  # a size is ignored: the split is fixed
    assert [len(b.targets) for b in batches] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([b.inputs for b in batches]), digits.inputs[digits.test_idx])
    assert torch.equal(torch.cat([b.targets for b in batches]), digits.labels[digits.test_idx])
    with pytest.raises(SsmgraphError, match="splits"):
        digits.sample(2, gen(0), "valid")


def test_digits_without_scikit_learn_says_how_to_install_it(monkeypatch):
    digits_mod.load_digits_tensors.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)
    try:
        with pytest.raises(SsmgraphError, match="pip install scikit-learn"):
            digits_mod.DigitsTask()
    finally:
        digits_mod.load_digits_tensors.cache_clear()


# ---- bytes ----------------------------------------------------------------------------------------------
def numbered_text(words: int) -> bytes:
    """Text where any 17-byte window contains a whole, unique word: windows can be located."""
    return " ".join(f"w{i:05d}" for i in range(words)).encode()


def test_bytes_windows_are_consecutive_and_shifted_by_one(tmp_path):
    data = numbered_text(2000)
    (tmp_path / "corpus.txt").write_bytes(data)
    task = text.BytesTask(str(tmp_path / "corpus.txt"), seq_len=16, valid_fraction=0.1)
    assert (task.kind, task.vocab_size, task.num_classes, task.seq_len) == ("lm", 256, 256, 16)
    n_valid = int(len(data) * 0.1)
    train, valid = data[: len(data) - n_valid], data[len(data) - n_valid :]
    assert bytes(task.train_data.tolist()) == train and bytes(task.valid_data.tolist()) == valid
    batch = task.sample(64, gen(0))
    check_batch(task, batch, 64)
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert bytes(x + y[-1:]) in train, "a training window lies inside the training part"
    assert torch.equal(batch.inputs, task.sample(64, gen(0)).inputs)


def test_bytes_validation_windows_tile_the_validation_part(tmp_path):
    data = numbered_text(2000)
    (tmp_path / "corpus.txt").write_bytes(data)
    task = text.BytesTask(str(tmp_path / "corpus.txt"), seq_len=16, valid_fraction=0.1)
    n_train = len(data) - int(len(data) * 0.1)
    task.eval_size = 10_000
    batches = list(task.eval_batches(7, "valid"))
    inputs = torch.cat([b.inputs for b in batches])
    targets = torch.cat([b.targets for b in batches])
    assert inputs.shape[0] == (len(data) - n_train - 1) // 16
    assert bytes(inputs.flatten().tolist()) == data[n_train : n_train + 16 * inputs.shape[0]], "in order, no overlap, no gap"
    assert bytes(targets.flatten().tolist()) == data[n_train + 1 : n_train + 1 + 16 * inputs.shape[0]]
    task.eval_size = 3
    assert sum(len(b.inputs) for b in task.eval_batches(2, "test")) == 3
    held = task.sample(32, gen(1), "valid")
    for x in held.inputs.tolist():
        assert bytes(x) in data[n_train:]


def test_bytes_reads_a_directory_of_text_files_in_order(tmp_path):
    (tmp_path / "b.md").write_text("second file\n" * 40, encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file, no newline at the end" * 20, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third: déjà vu\n" * 30, encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    data, files = text.read_corpus(tmp_path)
    assert [f.name for f in files] == ["a.txt", "b.md", "c.txt"]
    assert data.startswith(b"first file") and b"at the end\nsecond file" in data and data.endswith("déjà vu\n".encode())
    task = text.BytesTask(str(tmp_path), seq_len=32)
    assert str(tmp_path) in task.describe()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "no such file"),
        ("empty_dir", "no text files"),
        ("empty_file", "empty"),
        ("blank_files", "empty"),
        ("binary", "binary"),
        ("latin1", "not UTF-8"),
        ("short", "too short"),
        ("short_valid", "too short"),
    ],
)
def test_bytes_bad_data_is_refused_naming_the_path(tmp_path, case, match):
    options: dict = {"seq_len": 64}
    if case == "missing":
        path = tmp_path / "nope.txt"
    elif case == "empty_dir":
        path = tmp_path / "corpus"
        path.mkdir()
        write(path / "image.png", b"\x89PNG")
    elif case == "empty_file":
        path = write(tmp_path / "empty.txt", b"")
    elif case == "blank_files":
        path = tmp_path / "corpus"
        path.mkdir()
        write(path / "a.txt", b"")
        write(path / "b.md", b"\n\n")
    elif case == "binary":
        path = tmp_path / "corpus"
        path.mkdir()
        write(path / "fine.txt", b"hello " * 100)
        path = write(path / "data.txt", b"text then \x00\x01\x02 binary")
    elif case == "latin1":
        path = write(tmp_path / "latin1.txt", "café crème ".encode("latin-1") * 50)
    elif case == "short":
        path = write(tmp_path / "short.txt", b"a few words only")
    else:
        path = write(tmp_path / "medium.txt", b"enough for training, not for validation. " * 20)
        options["valid_fraction"] = 0.05
    with pytest.raises(SsmgraphError, match=match) as info:
        text.BytesTask(str(path), **options)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("corpus", "low", "high", "word"), [("en", 60_000, 100_000, b"Alice"), ("fr", 40_000, 60_000, "Mercédès".encode())])
def test_bytes_bundled_corpora_are_natural_language(corpus, low, high, word):
    path = text.BUNDLED[corpus]
    data = path.read_bytes()
    assert low <= len(data) <= high
    data.decode("utf-8")
    assert word in data and b"\x00" not in data
    task = all_specs()["bytes"].factory(**{**all_specs()["bytes"].defaults(), "corpus": corpus})
    assert task.source == str(path)
    assert task.train_data.numel() + task.valid_data.numel() == len(data)
    check_batch(task, task.sample(4, gen(0)), 4)
    assert sum(len(b.inputs) for b in task.eval_batches(64)) == (task.valid_data.numel() - 1) // 256
    top = torch.bincount(task.train_data.long(), minlength=256).topk(3).indices.tolist()
    assert ord(" ") in top, "prose: space is among the commonest bytes"


def test_bytes_default_is_the_english_sample():
    spec = all_specs()["bytes"]
    assert spec.defaults()["path"] is None and spec.defaults()["corpus"] == "en"
    assert spec.param("corpus").choices == ("en", "fr")
    with pytest.raises(SsmgraphError, match="splits"):
        spec.factory().sample(1, gen(0), "dev")
