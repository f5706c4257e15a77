"""Conversions between ssmgraph models and other libraries' checkpoints (see docs/interop.md).

``import_hf`` / ``export_hf``: Hugging Face transformers' GPT-2, Llama and Mamba families,
without transformers installed for import (it is the optional extra ``ssmgraph[hf]``).
"""

from __future__ import annotations

from ssmgraph.interop.errors import HFConfigError, HFExportError, HFFileError, HFWeightsError, InteropError
from ssmgraph.interop.hf import export_hf, import_hf

__all__ = ["HFConfigError", "HFExportError", "HFFileError", "HFWeightsError", "InteropError", "export_hf", "import_hf"]
