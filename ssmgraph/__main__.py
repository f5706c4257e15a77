"""``python -m ssmgraph`` (what torchrun runs)."""

from ssmgraph.cli import app

app(prog_name="ssmgraph")
