"""Helpers for the tests of the ``text`` task (test_text_task.py, test_text_task_errors.py): a
cache folder per test, a BPE tokenizer trained on the bundled text (never downloaded), and
documents that can be told apart. Imported by basename, like task_helpers.py; each test module
makes fixtures of ``isolated_cache`` and ``train_bpe``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssmgraph.train.tasks import token_cache
from ssmgraph.train.tasks.text import BUNDLED

EOT = "<|endoftext|>"


def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches go to a folder of the test (never ~/.cache); tests of the default places unset it."""
    folder = tmp_path / ".cache"  # hidden: tests read tmp_path as a data folder
    monkeypatch.setenv(token_cache.ENV, str(folder))
    return folder


def train_bpe(folder: Path, vocab: int = 300, special: tuple[str, ...] = (EOT,)) -> Path:
    """A byte-level BPE tokenizer trained on the bundled English text, saved as folder/tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=list(special), initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train([str(BUNDLED["en"])], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def documents(count: int, words: int = 12) -> list[str]:
    """Documents whose every word names the document: ``d0007w00 d0007w01 ...``."""
    return [" ".join(f"d{i:04d}w{j:02d}" for j in range(words)) for i in range(count)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path
