"""``tokenizer_source`` (``union``, ``base``, a model folder) against mergekit's own run_merge: the same
vocabulary (token for token), ``vocab_size``, and every tensor to 1e-6, the embeddings and LM head moved
onto the output tokenizer's ids.

Three tiny Llama checkpoints: the base's tokenizer has w0..w39 (and its embedding 7 padding rows more,
which the output drops, as mergekit's), a's and b's w20..w59 (so w40..w59 are in two models but not the
base: in a union their rows are the mean of the two), and b has an added token of its own (its row comes
from b alone). mergekit numbers the tokens a union adds in a hash map's order, which changes from run to
run, so rows are compared token by token; the base's tokens keep their ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmgraph.cli.main import app

transformers = pytest.importorskip("transformers")
pytest.importorskip("mergekit")

TOL = 1e-6


def _tokenizer(folder: Path, words: range, added: tuple[str, ...] = ()) -> int:
    """A WordLevel tokenizer of [UNK] and the words, plus ``added`` special tokens; its size."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, **{f"w{i}": n + 1 for n, i in enumerate(words)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens([AddedToken(a, special=True) for a in added])
    tok.save(str(folder / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("union")
    kinds = {"base": (range(40), ()), "a": (range(20, 60), ()), "b": (range(20, 60), ("<|end|>",))}
    for seed, (name, (words, added)) in enumerate(kinds.items()):
        (root / name).mkdir()
        size = _tokenizer(root / name, words, added) + (7 if name == "base" else 0)
        config = transformers.LlamaConfig(
            vocab_size=size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(config).save_pretrained(root / name)
    return root


CONFIG = {
    "merge_method": "ties",
    "base_model": "base",
    "models": [
        {"model": "a", "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": "b", "parameters": {"weight": 0.4, "density": 0.7}},
    ],
    "tokenizer_source": "union",
    "dtype": "float32",
}


def _theirs(root: Path, config: dict, out: str) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    cwd = os.getcwd()
    os.chdir(root)  # mergekit reads model paths from the current folder
    try:
        LoaderCache.loaders.clear()  # mergekit caches loaders by (relative) model path across runs
        options = MergeOptions(cuda=False, write_model_card=False, quiet=True, random_seed=0)
        run_merge(MergeConfiguration.model_validate(config), str(root / out), options)
    finally:
        os.chdir(cwd)
    return root / out


@pytest.mark.parametrize(("source", "size"), [("union", 62), ("base", 41), ("b", 42)])
def test_vocabulary_and_tensors_equal_mergekit(root: Path, source: str, size: int) -> None:
    """union: [UNK], w0..w59, <|end|>; base: [UNK], w0..w39; b: [UNK], w20..w59, <|end|>."""
    config = {**CONFIG, "tokenizer_source": source}
    (root / f"{source}.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    ours = root / f"ours-{source}"
    result = CliRunner().invoke(app, ["merge", str(root / f"{source}.yml"), "--out", str(ours)])
    assert result.exit_code == 0, result.output
    theirs = _theirs(root, config, f"theirs-{source}")
    vocab = transformers.AutoTokenizer.from_pretrained(ours).get_vocab()
    their_vocab = transformers.AutoTokenizer.from_pretrained(theirs).get_vocab()
    assert vocab.keys() == their_vocab.keys() and len(vocab) == size
    if source == "union":
        assert all(vocab[f"w{i}"] == their_vocab[f"w{i}"] == i + 1 for i in range(40))  # the base's ids
        assert vocab["<|end|>"] == their_vocab["<|end|>"] == 61  # added tokens last
        assert [vocab[f"w{i}"] for i in range(40, 60)] == list(range(41, 61))  # by id in a: the base lacks w40..w59
    else:
        assert vocab == their_vocab
    order = torch.tensor([their_vocab[token] for token in sorted(vocab, key=vocab.__getitem__)])
    assert [json.loads((f / "config.json").read_text())["vocab_size"] for f in (ours, theirs)] == [size, size]
    mine, want = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert mine.keys() == want.keys()
    for key, tensor in want.items():
        tensor = tensor[order] if key in ("model.embed_tokens.weight", "lm_head.weight") else tensor  # rows by our ids
        torch.testing.assert_close(mine[key], tensor, rtol=0, atol=TOL, msg=lambda m, key=key: f"{key}: {m}")
    assert mine["model.embed_tokens.weight"].shape == (size, 16)
    assert transformers.AutoModelForCausalLM.from_pretrained(ours).config.vocab_size == size


def test_union_with_an_ssmgraph_model_is_a_located_error(root: Path, tmp_path: Path) -> None:
    import ssmgraph

    for name in ("s1", "s2"):
        ssmgraph.save(ssmgraph.build("llama", vocab=16, d_model=8, layers=1, heads=2), tmp_path / name)
    config = {"merge_method": "linear", "models": [{"model": "s1", "parameters": {"weight": 1}}, {"model": "s2"}]}
    text = yaml.safe_dump({**config, "tokenizer_source": "union"}, sort_keys=False)
    (tmp_path / "u.yml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "u.yml"), "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code != 0 and "E112" in result.output and "u.yml:7" in result.output
    assert not (tmp_path / "out").exists()
