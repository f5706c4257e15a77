"""The plugin is found through its entry point, keeps the block contract, and trains."""

from __future__ import annotations

import importlib.metadata as md

import pytest
import torch

import ssmgraph
from ssmgraph.registry.plugins import Registry
from ssmgraph.testing import parametrize_block_checks
from ssmgraph_liquid import BLUEPRINTS

BLOCKS = ["mix.liquid_s4", "mix.ltc", "mix.cfc"]


def test_found_through_the_entry_point():
    assert "liquid" in [ep.name for ep in md.entry_points(group="ssmgraph")]
    registry = Registry()
    for name in BLOCKS:
        assert registry.get(name).plugin == "ssmgraph-liquid"
    assert registry.plugins["liquid"].blocks == BLOCKS


@parametrize_block_checks(BLOCKS)
def test_conformance(block_check):
    block_check()


def test_the_liquid_s4_blueprint_builds_and_learns():
    torch.manual_seed(0)
    model = ssmgraph.build(BLUEPRINTS / "liquid_s4.yaml", d_model=16, layers=2, vocab=8, layer_args={"d_state": 8, "l_max": 32})
    tokens = torch.randint(0, 8, (8, 16))
    optimizer = torch.optim.AdamW(ssmgraph.param_groups(model, lr=1e-2, weight_decay=0.0))
    losses = []
    for _ in range(60):  # learn to copy the previous token
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, 1:].reshape(-1, 8), tokens[:, :-1].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("block", ["mix.ltc", "mix.cfc"])
def test_the_cells_fit_a_classifier_blueprint(block):
    model = ssmgraph.build("classifier", mixer=block, d_model=8, layers=1, layer_args={"units": 6})
    assert model(torch.randn(2, 10, 1)).shape == (2, 10)
