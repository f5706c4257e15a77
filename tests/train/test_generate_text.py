"""`ssmgraph generate` on tokenized-text models, and `eval` of the models a run saves beside its
checkpoints (best/, ema/), which take the run's task."""

from __future__ import annotations

import pytest
import torch
from text_helpers import EOT, documents, isolated_cache, train_bpe, write_jsonl

import ssmgraph
from ssmgraph.errors import SsmgraphError
from ssmgraph.train import TrainConfig, evaluate_run, train
from ssmgraph.train.generate import generate_text, model_tokenizer

TINY = {"d_model": 16, "layers": 1, "heads": 2, "max_len": 32}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    return isolated_cache(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A 3-step gpt run on the text task with a BPE tokenizer, keeping best/ and ema/."""
    root = tmp_path_factory.mktemp("gen")
    tokenizer = train_bpe(root / "tok")
    write_jsonl(root / "docs" / "a.jsonl", documents(40))
    options = {"path": str(root / "docs"), "tokenizer": str(tokenizer), "seq_len": 8}
    config = TrainConfig(
        task="text", task_options=options, steps=3, batch_size=4, warmup_steps=1, eval_interval=3, eval_size=8,
        keep_best="valid_loss", ema=0.5,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        isolated_cache(root, patch)
        train("gpt", root / "run", config, overrides=TINY, progress=False)
    return root / "run", tokenizer


def test_generate_encodes_with_the_runs_tokenizer_and_decodes(text_run) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    run, path = text_run
    bpe = tokenizers.Tokenizer.from_file(str(path))
    prompt = "Alice was"
    text = generate_text(run, prompt, 4, temperature=0.0, top_k=None, seed=0)
    ids = bpe.encode(prompt, add_special_tokens=False).ids
    model = ssmgraph.load(run).eval()
    greedy = model.generate(torch.tensor([ids]), 4, temperature=0.0)[0].tolist()
    eod = bpe.token_to_id(EOT)
    if eod in greedy[len(ids) :]:  # generation stops at the end of the document
        greedy = greedy[: greedy.index(eod, len(ids))]
    assert text == bpe.decode(greedy, skip_special_tokens=False)
    assert text.startswith(prompt)


def test_an_empty_prompt_starts_a_document(text_run) -> None:
    run, _ = text_run
    assert EOT not in generate_text(run, "", 3, temperature=0.0, top_k=None, seed=0)


def test_the_models_a_run_saves_find_its_tokenizer(text_run) -> None:
    run, path = text_run
    for folder in (run / "best", run / "ema", run / "checkpoints" / "step_00000003"):
        assert model_tokenizer(folder, 300).source.path == path


def test_eval_of_best_and_ema_uses_the_runs_task(text_run) -> None:
    run, _ = text_run
    for folder in ("best", "ema"):
        result = evaluate_run(run / folder, split="valid")
        assert result["task"] == "text" and result["loss"] > 0


def test_a_model_without_a_tokenizer_is_refused(tmp_path) -> None:
    model_dir = ssmgraph.save(ssmgraph.build("gpt", vocab=300, **TINY), tmp_path / "m")
    with pytest.raises(SsmgraphError, match="vocabulary 300 and no tokenizer"):
        generate_text(model_dir, "hi", 2, temperature=0.0, top_k=None, seed=0)


@pytest.mark.slow  # imports transformers
def test_an_imported_model_generates_with_the_tokenizer_it_carries(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop.hf import import_hf

    path = train_bpe(tmp_path / "tok")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOT)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    text = generate_text(tmp_path / "imported", "Alice was", 3, temperature=0.0, top_k=None, seed=0)
    ids = tokenizer.encode("Alice was")
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    greedy = reference.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=0)[0].tolist()
    eod = tokenizer.convert_tokens_to_ids(EOT)
    if eod in greedy[len(ids) :]:
        greedy = greedy[: greedy.index(eod, len(ids))]
    assert text == tokenizer.decode(greedy)
