"""The ``checkpoints`` fixture of the Hugging Face interop tests: one small random transformers
model per family (hf_models.py), saved with save_pretrained and imported into ssmgraph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ssmgraph.interop import import_hf


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path, Path]]:
    """family -> (transformers model, its save_pretrained directory, the imported run)."""
    from hf_models import configs, hf_model  # deferred: importing it skips without transformers

    root = tmp_path_factory.mktemp("hf")
    found = {}
    for name, config in configs().items():
        model = hf_model(config)
        model.save_pretrained(root / name)
        found[name] = (model, root / name, import_hf(root / name, root / f"{name}-run"))
    return found
