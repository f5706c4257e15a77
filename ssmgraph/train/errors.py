"""The training layer's error: the user must act (divergence, a bad run directory, a model that does not fit the task)."""

from __future__ import annotations

from ssmgraph.errors import SsmgraphError

DAMAGED = "the checkpoint is damaged: delete its directory to resume from the one before, or start again with --overwrite"
"""How a message about a damaged checkpoint (its model, optimizer or trainer state) ends."""


class TrainingError(SsmgraphError):
    """Training stopped for a reason the user must act on (divergence, a bad run directory)."""

    code = "E500"
