"""The training layer's error: the user must act (divergence, a bad run directory, a model that does not fit the task)."""

from __future__ import annotations

from ssmgraph.errors import SsmgraphError


class TrainingError(SsmgraphError):
    """Training stopped for a reason the user must act on (divergence, a bad run directory)."""

    code = "E500"
