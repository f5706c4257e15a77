"""The ``text`` task: documents packed with end-of-document ids, tokenized once into a cache that
later runs map, a validation split by documents, deterministic windows and bits per byte.
(Refused data: test_text_task_errors.py.)
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from task_helpers import check_batch, gen
from text_helpers import EOT, documents, isolated_cache, train_bpe, write_jsonl
from torch import nn
from typer.testing import CliRunner

from ssmgraph.train.evaluation import evaluate
from ssmgraph.train.fitting import make_task
from ssmgraph.train.tasks import token_cache, tokenizing
from ssmgraph.train.tasks.base import IGNORE
from ssmgraph.train.tasks.tokenized import TextTask


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    return isolated_cache(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe"))


def stream_of(task: TextTask, split: str) -> list[int]:
    part = task.part(split)
    return part.read(np.arange(part.size)).tolist()


def split_documents(ids: list[int], eod: int) -> list[bytes]:
    """A byte-level stream cut at its end-of-document ids."""
    out, current = [], []
    for i in ids:
        if i == eod:
            out.append(bytes(current))
            current = []
        else:
            current.append(i)
    assert not current, "the stream ends with an end-of-document id"
    return out


# ---- packing ---------------------------------------------------------------------------------------------
def test_bytes_documents_are_packed_with_an_end_of_document_id(tmp_path):
    texts = documents(40)
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", texts)), seq_len=16, valid_fraction=0.2)
    assert (task.vocab_size, task.num_classes, task.store.eod_id) == (257, 257, 256)
    expected = [i for t in texts for i in (*t.encode(), 256)]
    assert task.store.tokens.tolist() == expected
    train, valid = split_documents(stream_of(task, "train"), 256), split_documents(stream_of(task, "valid"), 256)
    encoded = [t.encode() for t in texts]
    assert train == [d for d, held in zip(encoded, task.valid_mask) if not held], "training documents in file order"
    assert valid == [d for d, held in zip(encoded, task.valid_mask) if held]


def test_bpe_documents_end_with_the_tokenizer_eos(tmp_path, bpe):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bpe))
    texts = ["Alice was beginning to get very tired", "of sitting by her sister on the bank", "and of having nothing to do"] * 4
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", texts)), tokenizer=str(bpe), seq_len=8, valid_fraction=0.25)
    eot = tokenizer.token_to_id(EOT)
    assert task.store.eod_id == eot and task.vocab_size == tokenizer.get_vocab_size() == 300
    expected = [i for t in texts for i in (*tokenizer.encode(t, add_special_tokens=False).ids, eot)]
    assert task.store.tokens.tolist() == expected
    assert task.store.doc_bytes.tolist() == [len(t.encode()) for t in texts]
    check_batch(task, task.sample(8, gen(0)), 8)


def test_without_an_eos_token_the_eod_is_a_new_id(tmp_path):
    path = train_bpe(tmp_path / "tok", vocab=280, special=("<pad>",))
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", documents(10))), tokenizer=str(path), seq_len=8)
    assert task.store.eod_id == 280 and task.vocab_size == 281
    named = TextTask(str(tmp_path / "d.jsonl"), tokenizer=str(path), eod="<pad>", seq_len=8)
    assert named.store.eod_id == 0 and named.vocab_size == 280


def test_text_files_divide_into_documents(tmp_path):
    (tmp_path / "one.txt").write_text("first para\nstill first\n\n\nsecond para\n  \nthird\n", encoding="utf-8")
    paragraphs = TextTask(str(tmp_path / "one.txt"), seq_len=2)  # auto: one text file -> paragraphs
    assert split_documents(paragraphs.store.tokens.tolist(), 256) == [b"first para\nstill first", b"second para", b"third\n"]
    lines = TextTask(str(tmp_path / "one.txt"), documents="lines", seq_len=2)
    assert split_documents(lines.store.tokens.tolist(), 256) == [b"first para", b"still first", b"second para", b"third"]
    (tmp_path / "two.md").write_text("# two\n\nmore", encoding="utf-8")
    files = TextTask(str(tmp_path), seq_len=2)  # auto: several text files -> one document each
    assert split_documents(files.store.tokens.tolist(), 256) == [
        (tmp_path / "one.txt").read_bytes(),
        (tmp_path / "two.md").read_bytes(),
    ]


def test_a_folder_mixes_formats_and_skips_hidden_files(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", ["from jsonl"], field="body")
    (tmp_path / "b.json").write_text(json.dumps([{"body": "from a json array"}]), encoding="utf-8")
    pq.write_table(pa.table({"body": ["from parquet", "row two"]}), tmp_path / "c.parquet")
    write_jsonl(tmp_path / ".hidden" / "x.jsonl", ["never read"], field="other")
    task = TextTask(str(tmp_path), field="body", seq_len=2, valid_fraction=0.3)
    assert split_documents(task.store.tokens.tolist(), 256) == [b"from jsonl", b"from a json array", b"from parquet", b"row two"]


def test_the_bundled_corpus_is_the_default(bpe):
    task = make_task("text", {"tokenizer": str(bpe), "seq_len": 64})
    assert task.source.endswith("sample.txt") and task.vocab_size == 300
    assert task.valid_mask.sum() > 5 and (~task.valid_mask).sum() > 50, "paragraphs are the documents"
    assert 1.2 < task.bytes_per_token("valid") < 3.0, "300 tokens: bytes and a few merges"


# ---- the cache -------------------------------------------------------------------------------------------
def test_a_second_load_maps_the_cache_without_tokenizing(tmp_path, bpe, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", documents(50))
    first = TextTask(str(data), tokenizer=str(bpe), seq_len=8)
    assert first.store.built and isinstance(first.store.tokens, np.memmap)
    header = first.store.path
    stamps = {p: p.stat().st_mtime_ns for p in header.parent.glob("text-*")}
    assert len(stamps) == 3

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokenizing.TextTokenizer, "__init__", refuse)
    second = TextTask(str(data), tokenizer=str(bpe), seq_len=8)
    assert not second.store.built and second.store.path == header
    assert {p: p.stat().st_mtime_ns for p in header.parent.glob("text-*")} == stamps
    assert np.array_equal(second.store.tokens, first.store.tokens) and second.vocab_size == first.vocab_size
    assert torch.equal(second.sample(4, gen(1)).inputs, first.sample(4, gen(1)).inputs)


def test_changed_data_options_or_tokenizer_tokenize_again(tmp_path, bpe):
    data = write_jsonl(tmp_path / "d.jsonl", documents(30))
    base = TextTask(str(data), tokenizer=str(bpe), seq_len=8)
    assert not TextTask(str(data), tokenizer=str(bpe), seq_len=16, valid_fraction=0.2).store.built, "not a cache setting"
    write_jsonl(data, documents(31))
    grown = TextTask(str(data), tokenizer=str(bpe), seq_len=8)
    assert grown.store.built and grown.store.path != base.store.path and grown.store.ends.size == 31
    assert not base.store.path.exists() and not base.store.path.with_suffix(".tokens").exists(), "the stale cache is gone"
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert TextTask(str(data), tokenizer=str(bpe), seq_len=8).store.built, "a newer modification time"
    other = train_bpe(tmp_path / "tok", vocab=320)
    retrained = TextTask(str(data), tokenizer=str(other), seq_len=8)
    assert retrained.store.built and retrained.vocab_size == 320
    assert len(list(retrained.store.path.parent.glob("text-*.json"))) == 2, "another tokenizer's cache is kept"
    (other.parent / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}), encoding="utf-8")
    assert TextTask(str(data), tokenizer=str(other), seq_len=8).store.built, "the tokenizer config is part of the key"
    assert TextTask(str(data), seq_len=8).store.built and TextTask(str(data), eod=None, seq_len=8).store.built is False


def test_the_cache_lies_beside_the_data_or_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(token_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_jsonl(tmp_path / "corpus" / "d.jsonl", documents(10))
    task = TextTask(str(data.parent), seq_len=8)
    assert task.store.path.parent == data.parent / ".ssmgraph_cache"
    assert not TextTask(str(data.parent), seq_len=8).store.built, "the cache folder is not read as data"
    blocked = write_jsonl(tmp_path / "readonly" / "d.jsonl", documents(10))
    (blocked.parent / ".ssmgraph_cache").write_text("not a folder")  # as a folder that cannot be written
    fallback = TextTask(str(blocked), seq_len=8)
    assert fallback.store.path.parent == tmp_path / "xdg" / "ssmgraph" / "text"
    assert not TextTask(str(blocked), seq_len=8).store.built
    bundled = TextTask(seq_len=8)
    assert bundled.store.path.parent == tmp_path / "xdg" / "ssmgraph" / "text", "never written into the package"


def test_processes_starting_together_tokenize_once(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", documents(20))
    real_build, builds = token_cache._build, []

    def slow_build(*args):
        builds.append(1)
        time.sleep(0.3)  # both have missed the cache and wait on the lock meanwhile
        return real_build(*args)

    monkeypatch.setattr(token_cache, "_build", slow_build)
    start = threading.Barrier(2)
    results = []

    def run() -> None:
        start.wait()
        results.append(TextTask(str(data), seq_len=8))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and sorted(r.store.built for r in results) == [False, True]
    assert np.array_equal(results[0].store.tokens, results[1].store.tokens)


def test_a_damaged_cache_is_rebuilt(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", documents(10))
    header = TextTask(str(data), seq_len=8).store.path
    tokens = header.with_suffix(".tokens")
    tokens.write_bytes(tokens.read_bytes()[:-2])  # a truncated token file
    again = TextTask(str(data), seq_len=8)
    assert again.store.built and again.store.tokens.size == tokens.stat().st_size // 2
    header.write_text("{not json")
    assert TextTask(str(data), seq_len=8).store.built
    assert not [p for p in header.parent.iterdir() if p.name.startswith(".")], "no temporary files left"


# ---- split and sampling ----------------------------------------------------------------------------------
def test_validation_holds_whole_documents_and_its_share_of_tokens(tmp_path):
    texts = [doc if i < 200 else f"{doc} {doc} {doc} {doc}" for i, doc in enumerate(documents(220, words=10))]
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", texts)), seq_len=16, valid_fraction=0.1)
    train = split_documents(stream_of(task, "train"), 256)
    valid = split_documents(stream_of(task, "valid"), 256)
    assert not set(train) & set(valid) and sorted(train + valid) == sorted(t.encode() for t in texts)
    words = {w for d in valid for w in d.decode().split()}
    assert not {w[:5] for w in words} & {w[:5] for d in train for w in d.decode().split()}, "no document in both parts"
    total = task.parts["train"].size + task.parts["valid"].size
    share = task.parts["valid"].size / total
    assert 0.1 <= share < 0.1 + 4 * 10 * 9 / total, "just past valid_fraction: the last document taken may be long"
    again = TextTask(str(tmp_path / "d.jsonl"), seq_len=16, valid_fraction=0.1)
    assert np.array_equal(again.valid_mask, task.valid_mask), "a fixed split"
    windows = task.sample(64, gen(0))
    check_batch(task, windows, 64)
    train_stream = bytes(i if i < 256 else 0 for i in stream_of(task, "train"))
    for x, y in zip(windows.inputs.tolist(), windows.targets.tolist()):
        assert torch.equal(torch.tensor(x[1:]), torch.tensor(y[:-1]))
        assert bytes(i if i < 256 else 0 for i in x + y[-1:]) in train_stream


def test_sampling_follows_the_generator_so_a_resume_draws_the_same_windows(tmp_path):
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", documents(100))), seq_len=32)
    generator = gen(5)
    [task.sample(8, generator) for _ in range(3)]
    state = generator.get_state()
    ahead = [task.sample(8, generator).inputs for _ in range(2)]
    resumed = torch.Generator()
    resumed.set_state(state)
    assert all(torch.equal(a, task.sample(8, resumed).inputs) for a in ahead)
    assert not torch.equal(ahead[0], ahead[1])


def test_evaluation_tiles_the_validation_stream(tmp_path):
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", documents(100))), seq_len=16)
    batches = list(task.eval_batches(5, "valid"))
    inputs = torch.cat([b.inputs for b in batches])
    stream = stream_of(task, "valid")
    assert inputs.shape[0] == (len(stream) - 1) // 16 and inputs.reshape(-1).tolist() == stream[: inputs.numel()]
    assert all((b.targets != IGNORE).all() for b in batches)
    assert torch.equal(inputs, torch.cat([b.inputs for b in task.eval_batches(7, "test")]))
    assert len(list(task.eval_batches(4, "valid", size=6))) == 2


# ---- bits per byte -------------------------------------------------------------------------------------
class Lookup(nn.Module):
    """Fixed random logits per input token: a model whose loss can be computed by hand."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=gen(0)))

    def forward(self, tokens):
        return self.table[tokens]


def test_bits_per_byte_is_the_held_out_loss_per_utf8_byte(tmp_path, bpe):
    texts = [f"Caf\u00e9 num\u00e9ro {i}: the queen said \u201coff with her head\u201d" for i in range(60)]
    task = TextTask(str(write_jsonl(tmp_path / "d.jsonl", texts)), tokenizer=str(bpe), seq_len=8, valid_fraction=0.2)
    model = Lookup(task.vocab_size)
    metrics = evaluate(model, task, batch_size=4, size=10_000, split="valid")
    losses = [
        F.cross_entropy(model(b.inputs).reshape(-1, task.vocab_size), b.targets.reshape(-1), reduction="sum")
        for b in task.eval_batches(4, "valid", 10_000)
    ]
    scored = sum(b.targets.numel() for b in task.eval_batches(4, "valid", 10_000))
    nats = float(sum(losses).detach()) / scored
    held = [t for t, h in zip(texts, task.valid_mask) if h]
    valid_bytes = sum(len(t.encode("utf-8")) for t in held)
    valid_tokens = sum(len(tokenizer_ids) + 1 for tokenizer_ids in _encode(bpe, held))
    assert metrics["bits"] == pytest.approx(nats / math.log(2), rel=1e-6)
    assert metrics["bits_per_byte"] == pytest.approx(nats * valid_tokens / valid_bytes / math.log(2), rel=1e-6)
    assert valid_bytes > valid_tokens, "a BPE token holds more than a byte"


def _encode(path, texts):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]


def test_the_bytes_task_reports_bits_per_byte_equal_to_bits():
    task = make_task("bytes", {"seq_len": 16})
    metrics = evaluate(Lookup(256), task, batch_size=8, size=4)
    assert metrics["bits_per_byte"] == metrics["bits"]


# ---- end to end ----------------------------------------------------------------------------------------
def test_train_cli_fits_the_vocabulary_to_the_tokenizer(tmp_path, bpe):
    from ssmgraph.cli import app

    data = write_jsonl(tmp_path / "data" / "d.jsonl", documents(60))
    out = tmp_path / "run"
    args = ["train", "gpt", "--task", "text", "-t", f"path={data.parent}", "-t", f"tokenizer={bpe.parent}", "-t", "seq_len=16"]
    small = [
        "--set",
        "d_model=16",
        "--set",
        "layers=1",
        "--set",
        "heads=2",
        "-b",
        "4",
        "--steps",
        "3",
        "--quiet",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, [*args, *small])
    assert result.exit_code == 0, result.output
    assert "bits/byte" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["overrides"]["vocab"] == 300
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and evals[-1]["bits_per_byte"] < evals[-1]["bits"]
    evaluation = CliRunner().invoke(app, ["eval", str(out), "--json", "--split", "valid"])
    assert evaluation.exit_code == 0, evaluation.output
    assert json.loads(evaluation.stdout)["bits_per_byte"] == pytest.approx(evals[-1]["bits_per_byte"], rel=1e-5)
    narrow = CliRunner().invoke(app, [*args, *small[:-2], "--out", str(tmp_path / "narrow"), "--set", "vocab=100"])
    assert narrow.exit_code == 2 and "error[E500]" in narrow.output and ">= 300" in narrow.output, narrow.output


def test_resume_of_a_text_run_gives_the_losses_of_an_uninterrupted_one(tmp_path, bpe):
    from ssmgraph.train import TrainConfig, resume, train
    from ssmgraph.train.metrics import read_metrics

    data = write_jsonl(tmp_path / "d.jsonl", documents(80))
    options = {"path": str(data), "tokenizer": str(bpe), "seq_len": 12}
    settings = {"task": "text", "task_options": options, "batch_size": 4, "warmup_steps": 1, "log_interval": 1, "eval_size": 4}
    small = {"d_model": 16, "layers": 1, "hidden": 16}
    train("lstm", tmp_path / "full", TrainConfig(steps=4, **settings), overrides=small, progress=False)
    train("lstm", tmp_path / "part", TrainConfig(steps=2, **settings), overrides=small, progress=False)
    resume(tmp_path / "part", steps=4, progress=False)

    def losses(run):
        return [r["loss"] for r in read_metrics(run) if r["split"] == "train"]

    assert len(losses(tmp_path / "full")) == 4 and losses(tmp_path / "part") == losses(tmp_path / "full")


def test_relative_data_and_tokenizer_paths_resume_and_evaluate_from_another_folder(tmp_path, bpe, monkeypatch):
    from ssmgraph.train import TrainConfig, evaluate_run, resume, train
    from ssmgraph.train.fitting import absolute_paths
    from ssmgraph.train.generate import generate_text

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_jsonl(work / "data" / "d.jsonl", documents(60))
    (work / "tok").mkdir()
    (work / "tok" / "tokenizer.json").write_bytes(bpe.read_bytes())
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    options = {"path": "data", "tokenizer": "tok", "seq_len": 12}
    config = TrainConfig(task="text", task_options=options, steps=2, batch_size=4, warmup_steps=1, eval_size=4)
    train("lstm", work / "run", config, overrides={"d_model": 16, "layers": 1, "hidden": 16}, progress=False)
    recorded = json.loads((work / "run" / "run.json").read_text())["config"]["task_options"]
    assert recorded == {"path": str(work / "data"), "tokenizer": str(work / "tok"), "seq_len": 12}
    assert config.task_options == {"path": "data", "tokenizer": "tok", "seq_len": 12}  # the caller's config as given
    monkeypatch.chdir(elsewhere)  # where neither "data" nor "tok" is
    assert resume(work / "run", steps=3, progress=False).step == 3
    assert math.isfinite(evaluate_run(work / "run")["bits_per_byte"])
    assert generate_text(work / "run", "d0001", 2, temperature=0.0, top_k=None, seed=0).startswith("d0001")
    expanded = absolute_paths("bytes", {"path": "~/corpus", "seq_len": 4, "corpus": "en"})
    assert expanded == {"path": str(Path.home() / "corpus"), "seq_len": 4, "corpus": "en"}


def test_a_tokenizer_is_found_in_checkpoint_and_imported_model_folders(tmp_path, bpe):
    from ssmgraph.interop.hf.metadata import FILES_FOLDER

    assert tokenizing.HF_FILES == FILES_FOLDER
    hf_checkpoint = tmp_path / "hf_model"
    hf_checkpoint.mkdir()
    (hf_checkpoint / "tokenizer.json").write_bytes(bpe.read_bytes())
    (hf_checkpoint / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    imported = tmp_path / "imported" / FILES_FOLDER
    imported.mkdir(parents=True)
    (imported / "tokenizer.json").write_bytes(bpe.read_bytes())
    run_checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002" / FILES_FOLDER
    run_checkpoint.mkdir(parents=True)
    (run_checkpoint / "tokenizer.json").write_bytes(bpe.read_bytes())
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step_00000002")
    for folder in (hf_checkpoint, imported.parent, tmp_path / "run"):
        found = tokenizing.find_tokenizer(str(folder))
        assert found.path is not None and found.path.read_bytes() == bpe.read_bytes()
    assert (
        tokenizing.find_tokenizer(str(hf_checkpoint)).fingerprint != tokenizing.find_tokenizer(str(imported.parent)).fingerprint
    )
