"""``ssmgraph import ...`` and ``ssmgraph export ...``: the converters on the command line.

ssmgraph.cli registers the two sub-apps; the converters are imported only when a command
runs, so ``ssmgraph --help`` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

err = Console(stderr=True)

import_app = typer.Typer(
    help="Convert another library's checkpoint into an ssmgraph model directory (`ssmgraph import hf --help`).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
export_app = typer.Typer(
    help="Convert an ssmgraph model into another library's checkpoint (`ssmgraph export hf --help`).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace --out if it exists (it is replaced in one rename, never half-written).")
]


def user_errors(fn: F) -> F:
    """ssmgraph.cli's ``user_errors``, looked up when the command runs (ssmgraph.cli imports this module)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ssmgraph.cli import user_errors as print_user_errors

        return print_user_errors(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@import_app.command("hf")
@user_errors
def import_hf(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="A Hugging Face checkpoint directory: config.json plus model.safetensors (or pytorch_model.bin)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="The ssmgraph model directory to write (blueprint.yaml, model.safetensors, meta.json)."),
    ],
    overwrite: Overwrite = False,
) -> None:
    """Import a Hugging Face GPT-2, Llama or Mamba checkpoint as an ssmgraph model.

    Reads config.json and the weights without transformers (a `.bin` only through a
    weights-only load), writes a plain blueprint with the converted weights, and checks that
    every tensor fits. The model computes the same logits as transformers' own. Then:

    * `ssmgraph build runs/llama/blueprint.yaml` shows the architecture
    * `ssmgraph.load("runs/llama")` gives the model in Python
    * `ssmgraph export hf runs/llama --out DIR` converts it back

    Example: `ssmgraph import hf ~/models/tiny-llama --out runs/llama`
    """
    from ssmgraph.interop.hf import import_hf as convert

    convert(checkpoint, out, overwrite=overwrite)
    err.print(f"imported {checkpoint} into {out} (`ssmgraph.load({str(out)!r})`)", markup=False, highlight=False)


@export_app.command("hf")
@user_errors
def export_hf(
    run_dir: Annotated[
        Path, typer.Argument(help="A saved ssmgraph model, or a training run (its latest checkpoint is exported).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The Hugging Face checkpoint directory to write (config.json, model.safetensors).")
    ],
    overwrite: Overwrite = False,
) -> None:
    """Export an ssmgraph model as a Hugging Face checkpoint (GPT-2, Llama or Mamba).

    Works when the model has exactly the layout of one of these families: models built from
    blueprints/gpt.yaml, llama.yaml or mamba.yaml (and trained), or imported with
    `ssmgraph import hf`. Otherwise the error names the first node that differs. Load the
    result with `transformers.AutoModelForCausalLM.from_pretrained(DIR)`; no tokenizer is
    written (ssmgraph's text tasks use bytes).

    Example: `ssmgraph export hf runs/lm --out hf/lm`
    """
    from ssmgraph.interop.hf import export_hf as convert

    convert(run_dir, out, overwrite=overwrite)
    err.print(
        f"exported {run_dir} to {out} (`AutoModelForCausalLM.from_pretrained({str(out)!r})`)", markup=False, highlight=False
    )
