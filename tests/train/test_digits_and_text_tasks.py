"""The data-backed training tasks: digits (scikit-learn's handwritten digits as pixel sequences)
and bytes (text files and the bundled corpora as byte windows).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
from task_helpers import all_specs, check_batch, gen

from ssmgraph.errors import SsmgraphError
from ssmgraph.train.tasks import digits as digits_mod
from ssmgraph.train.tasks import text
from ssmgraph.train.tasks.base import Task

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


@pytest.mark.parametrize(
    ("corpus", "low", "high", "word"), [("en", 60_000, 100_000, b"Alice"), ("fr", 40_000, 60_000, "Mercédès".encode())]
)
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
