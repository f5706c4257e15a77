"""Errors of the converters: each names the file and the field or tensor at fault, and a fix."""

from __future__ import annotations

from ssmgraph.errors import SsmgraphError


class InteropError(SsmgraphError):
    """A conversion that cannot run; ``help`` is the suggestion printed under the message."""

    def __init__(self, message: str, help: str = ""):
        self.message, self.help = message, help
        super().__init__(f"{message}\n  help: {help}" if help else message)

    def __reduce__(self):  # keep exceptions picklable (multiprocessing)
        return (type(self), (self.message, self.help))


class HFFileError(InteropError):
    """A checkpoint or output directory that cannot be used: missing, unreadable, already there."""

    code = "E600"


class HFConfigError(InteropError):
    """A config.json value (architecture, field) that no ssmgraph blueprint reproduces."""

    code = "E601"


class HFWeightsError(InteropError):
    """Weights that do not fit the config: a tensor missing, unexpected or of another shape."""

    code = "E602"


class HFExportError(InteropError):
    """A model whose blueprint has no Hugging Face equivalent."""

    code = "E603"
