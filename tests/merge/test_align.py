"""The recipe's ``permute`` step: models are aligned onto the first before a weight-space merge."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import ssmgraph
from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.merge.permute.model_spaces import model_spaces
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge


@pytest.mark.parametrize("match", ["weights", "activations"])
def test_a_permuted_copy_merges_back_into_the_model(tmp_path, match, perturbed, deranged):
    """linear(a, permuted a) with `permute` is a again: the step undoes the permutation."""
    torch.manual_seed(0)
    model = perturbed(ssmgraph.build("classifier", mixer="mix.mamba", d_model=8, layers=2, layer_args={"d_state": 4}))
    spaces = model_spaces(model)
    ssmgraph.save(model, tmp_path / "a")
    twin = copy.deepcopy(model)
    twin.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces, seed=2)))
    ssmgraph.save(twin, tmp_path / "b")
    text = (
        "merge_method: linear\nmodels: [{name: a, checkpoint: a}, {name: b, checkpoint: b}]\n"
        f"permute: {{match: {match}, probe_batches: 2}}\ndata: {{task: digits, batch_size: 16, eval_batches: 1}}\n"
    )
    out, _ = run_merge(recipe_from_text(text, "merge.yaml", tmp_path), tmp_path / "out", progress=False)
    x = torch.randn(3, 10, 1)
    torch.testing.assert_close(ssmgraph.load(out)(x), model(x), rtol=1e-5, atol=1e-5)
    assert json.loads((out / "report.json").read_text())["alignment"]["match"] == match


def test_activation_matching_needs_data(tmp_path):
    torch.manual_seed(0)
    model = ssmgraph.build("classifier", mixer="mix.mamba", d_model=8, layers=1, layer_args={"d_state": 4})
    for name in ("a", "b"):
        ssmgraph.save(model, tmp_path / name)
    text = "merge_method: linear\nmodels: [{name: a, checkpoint: a}, {name: b, checkpoint: b}]\npermute: {match: activations}\n"
    with pytest.raises(
        SsmgraphError, match=r"merge.yaml:3.*`match: activations` reads the models' activations on data; the recipe has no 'data'"
    ):
        run_merge(recipe_from_text(text, "merge.yaml", tmp_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
