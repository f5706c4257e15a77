"""Text from byte-level language models (``ssmgraph generate``): the prompt goes in as UTF-8
bytes and the sampled bytes come back decoded."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.serialization import load
from ssmgraph.train.fitting import position_limit, token_vocab

BYTE_VOCAB = 256
EMPTY_PROMPT = "\n"
"""What an empty prompt starts from: generation needs at least one token."""


def generate_text(model_dir: Path, prompt: str, max_new_tokens: int, *, temperature: float, top_k: int | None, seed: int) -> str:
    """Continue ``prompt`` with the byte-level language model saved in ``model_dir`` (a run's latest checkpoint)."""
    model = load(model_dir).eval()
    vocab = token_vocab(model)
    ids = list(prompt.encode("utf-8")) or [ord(EMPTY_PROMPT)]
    if vocab != BYTE_VOCAB:
        has = "reads no token ids" if vocab is None else f"has vocabulary {vocab}"
        raise SsmgraphError(f"{model_dir}: generate works on byte-level language models (vocabulary 256); this model {has}")
    check_generation_length(model_dir, position_limit(model, learned_only=True), len(ids), max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    tokens = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return bytes(tokens[0].tolist()).decode("utf-8", errors="replace")


def check_generation_length(model_dir: Path, limit: int | None, prompt_len: int, new: int) -> None:
    """Learned positions end at max_len: refuse up front rather than fail mid-generation (the
    last new token is returned, not read, so it needs no position)."""
    if limit is None or prompt_len + new - 1 <= limit:
        return
    fix = (
        f"ask for at most -n {limit - prompt_len + 1}" if prompt_len <= limit else f"shorten the prompt to at most {limit} bytes"
    )
    raise SsmgraphError(
        f"{model_dir}: the prompt ({prompt_len} bytes) and -n {new} new tokens exceed the model's learned positions (max_len {limit}); {fix}"
    )
