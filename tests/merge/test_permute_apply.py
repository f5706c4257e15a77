"""Applying permutations: unknown spaces, non-permutations and missing parameters are clear errors."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.merge.permute.matching import weight_matching
from ssmgraph.merge.permute.model_spaces import model_spaces


def test_permute_state_rejects_unknown_spaces_and_non_permutations(deranged, small_blueprint):
    model = small_blueprint("gpt")
    spaces, state = model_spaces(model), model.state_dict()
    with pytest.raises(ValueError, match="no permutation space 'blocks.0.mlp/hidden' among blocks.0.mix/heads"):
        permute_state(state, spaces, {"blocks.0.mlp/hidden": torch.arange(3)})
    with pytest.raises(
        ValueError,
        match=r"blocks.0.ffn/hidden must be an integer tensor holding 0..31 once each, got torch.int64 of shape \(32,\): \[0, 0, 0, 0, 0, 0, 0, 0\] ...",
    ):
        permute_state(state, spaces, {"blocks.0.ffn/hidden": torch.zeros(32, dtype=torch.long)})
    lacking = {k: v for k, v in state.items() if k != "blocks.0.ffn.fc1.weight"}
    with pytest.raises(
        ValueError,
        match=r"cannot permute blocks.0.ffn/hidden: there is no parameter 'blocks.0.ffn.fc1.weight' \(blocks.0.ffn has fc1.bias, fc2.weight, fc2.bias\)",
    ):
        permute_state(lacking, spaces, deranged(spaces))
    with pytest.raises(
        ValueError, match=r"cannot match blocks.0.ffn/hidden in model b: there is no parameter 'blocks.0.ffn.fc1.weight'"
    ):
        weight_matching(state, lacking, spaces)
