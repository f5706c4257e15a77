"""Text from language models (``ssmgraph generate``): the prompt is encoded with the model's
tokenizer, or as UTF-8 bytes for byte-level models, and the sampled tokens are decoded.

The tokenizer is the one the model was trained with: a run of the ``text`` task (or a model it
saved: a checkpoint, ``best/``, ``ema/``) names it in its task options; a model imported with
``ssmgraph import hf``, or a run started from one, carries it in ``hf/``. Runs of ``bytes`` and
models of vocabulary 256 read bytes."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.serialization import load
from ssmgraph.train.fitting import position_limit, token_vocab
from ssmgraph.train.runs import config_of_model, run_of_model
from ssmgraph.train.tasks.tokenizing import BYTE_VOCAB, HF_FILES, TOKENIZER_FILE, TextTokenizer, find_tokenizer

EMPTY_PROMPT = "\n"
"""What an empty prompt starts from for byte-level models (generation needs at least one token);
with a tokenizer it starts a document: the end-of-document token."""
TEXT_TASK, BYTES_TASK = "text", "bytes"


def generate_text(model_dir: Path, prompt: str, max_new_tokens: int, *, temperature: float, top_k: int | None, seed: int) -> str:
    """Continue ``prompt`` with the language model saved in ``model_dir`` (a run: its latest checkpoint).

    Generation stops early at the end-of-document token of a tokenizer."""
    model = load(model_dir).eval()
    vocab = token_vocab(model)
    tokenizer = model_tokenizer(model_dir, vocab)
    ids = [int(i) for i in tokenizer.encode([prompt])[0]] or (
        [tokenizer.eod_id] if tokenizer.tokenizer is not None else [ord(EMPTY_PROMPT)]
    )
    if vocab is None or max(ids) >= vocab:
        has = "reads no token ids" if vocab is None else f"has vocabulary {vocab}"
        raise SsmgraphError(f"{model_dir}: this model {has}, too few for the prompt's token ids (up to {max(ids)})")
    check_generation_length(model_dir, position_limit(model, learned_only=True), len(ids), max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    tokens = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    out = tokens[0].tolist()
    if tokenizer.tokenizer is None:
        return tokenizer.decode(out)
    if tokenizer.eod_id in out[len(ids) :]:
        out = out[: out.index(tokenizer.eod_id, len(ids))]
    return tokenizer.decode(out if prompt else out[1:])


def model_tokenizer(model_dir: Path, vocab: int | None) -> TextTokenizer:
    """The tokenizer ``model_dir`` was trained with (see the module docstring); bytes for a vocabulary of 256."""
    config = config_of_model(model_dir)
    carried = [f / HF_FILES / TOKENIZER_FILE for f in (model_dir, run_of_model(model_dir)) if f is not None]
    carried = [path for path in carried if path.is_file()]
    if config is not None and config.task == TEXT_TASK:
        spec, eod = config.task_options.get("tokenizer"), config.task_options.get("eod")
        if spec is not None and not Path(spec).expanduser().exists() and carried:
            spec = str(carried[0])
        if spec is not None and not Path(spec).expanduser().exists():
            raise SsmgraphError(
                f"{model_dir}: the run's tokenizer {spec} is not there (a relative path is read from the current "
                "folder); run generate from the folder you trained in, or give the tokenizer's place in the run's task options"
            )
        return TextTokenizer(find_tokenizer(spec), eod)
    if (config is None or config.task != BYTES_TASK) and carried:
        return TextTokenizer(find_tokenizer(str(carried[0])), None)
    if vocab == BYTE_VOCAB or (config is not None and config.task == BYTES_TASK):
        return TextTokenizer(find_tokenizer(None), None)
    has = "reads no token ids" if vocab is None else f"has vocabulary {vocab}"
    raise SsmgraphError(
        f"{model_dir}: this model {has} and no tokenizer: generate reads a run of the text task (its tokenizer option), "
        f"a model imported with `ssmgraph import hf` (its {HF_FILES}/{TOKENIZER_FILE}) or a byte-level model (vocabulary 256)"
    )


def check_generation_length(model_dir: Path, limit: int | None, prompt_len: int, new: int) -> None:
    """Learned positions end at max_len: refuse up front rather than fail mid-generation (the
    last new token is returned, not read, so it needs no position)."""
    if limit is None or prompt_len + new - 1 <= limit:
        return
    fix = (
        f"ask for at most -n {limit - prompt_len + 1}" if prompt_len <= limit else f"shorten the prompt to at most {limit} tokens"
    )
    raise SsmgraphError(
        f"{model_dir}: the prompt ({prompt_len} tokens) and -n {new} new tokens exceed the model's learned positions (max_len {limit}); {fix}"
    )
