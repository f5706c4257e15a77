"""The plugin is found through its entry point, keeps the block contract, and trains."""

from __future__ import annotations

import importlib.metadata as md

import pytest
import torch
from ssmgraph_liquid import BLUEPRINTS

import ssmgraph
from ssmgraph.registry.plugins import get_registry
from ssmgraph.testing import parametrize_block_checks

BLOCKS = ["mix.liquid_s4", "mix.ltc", "mix.cfc"]


def test_found_through_the_entry_point():
    (entry_point,) = [ep for ep in md.entry_points(group="ssmgraph") if ep.name == "liquid"]
    assert entry_point.value == "ssmgraph_liquid" and entry_point.dist.name == "ssmgraph-liquid"
    registry = get_registry()
    for name in BLOCKS:
        assert registry.get(name).plugin == "ssmgraph-liquid"
    assert registry.plugins["liquid"].blocks == BLOCKS


@parametrize_block_checks(BLOCKS)
def test_conformance(block_check):
    block_check()


def fit(model: ssmgraph.CompiledModel, steps: int) -> list[float]:
    """Train on one fixed batch of 16 sequences, labelled by the sign of their mean; return the losses."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, 1, generator=generator)
    labels = (x.mean((1, 2)) > 0).long()
    optimizer = torch.optim.AdamW(ssmgraph.param_groups(model, lr=1e-2, weight_decay=0.0))
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_the_liquid_s4_blueprint_builds_and_learns():
    torch.manual_seed(0)
    layer_args = {"d_state": 8, "l_max": 16, "liquid_degree": 3}
    model = ssmgraph.build(BLUEPRINTS / "liquid_s4.yaml", d_model=16, layers=1, classes=2, layer_args=layer_args)
    (mixer,) = [n for n in model.nodes.values() if n.block.startswith("mix.")]
    assert mixer.block == "mix.liquid_s4" and mixer.plugin == "ssmgraph-liquid" and mixer.args["liquid_degree"] == 3
    losses = fit(model, 25)
    assert losses[-1] < 0.7 * losses[0]


CELLS = [("mix.ltc", {"units": 6, "ode_unfolds": 3}), ("mix.cfc", {"units": 6, "backbone_units": 16})]


@pytest.mark.parametrize("block,args", CELLS)
def test_the_cells_train_in_the_classifier_blueprint(block, args):
    torch.manual_seed(0)
    model = ssmgraph.build("classifier", mixer=block, d_model=8, layers=1, classes=2, layer_args=args)
    losses = fit(model, 25)
    assert losses[-1] < 0.7 * losses[0]
