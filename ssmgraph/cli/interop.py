"""``ssmgraph import hf`` and ``ssmgraph export hf``: the Hugging Face converters on the command line.

The converters (torch) are imported inside the commands: `ssmgraph --help` and each command's
help must start without torch (tests/cli/test_startup.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssmgraph.cli.errors import user_errors
from ssmgraph.cli.output import err, progress

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace --out if it exists (it is replaced in one rename, never half-written).")
]


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
    from ssmgraph.interop.hf import import_hf as import_checkpoint  # deferred (torch): see the module docstring

    with progress():
        import_checkpoint(checkpoint, out, overwrite=overwrite)
    err.print(f"imported {checkpoint} into {out} (`ssmgraph.load({str(out)!r})`)", markup=False, highlight=False)


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
    result with `transformers.AutoModelForCausalLM.from_pretrained(DIR)`. The tokenizer files of
    a model imported from Hugging Face (or a run started from one with --init) are written with it.

    Example: `ssmgraph export hf runs/lm --out hf/lm`
    """
    from ssmgraph.interop.hf import export_hf as export_checkpoint  # deferred (torch): see the module docstring

    export_checkpoint(run_dir, out, overwrite=overwrite)
    err.print(
        f"exported {run_dir} to {out} (`AutoModelForCausalLM.from_pretrained({str(out)!r})`)", markup=False, highlight=False
    )
