"""The ``ssmgraph`` command line (``ssmgraph.cli:app`` is the console script; ``python -m ssmgraph`` runs it too)."""

from ssmgraph.cli.main import app

__all__ = ["app"]
