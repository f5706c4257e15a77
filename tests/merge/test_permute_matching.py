"""Weight matching and activation matching undo a known permutation, solve spaces that share a
tensor, and bring two trained models closer (Git Re-Basin)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.graph.perm_spaces import GraphSpace, block_spaces
from ssmgraph.merge.permute.matching import activation_matching, weight_matching
from ssmgraph.merge.permute.model_spaces import model_spaces
from ssmgraph.registry.specs import PermAxis
from ssmgraph.testing import make_case

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(builtin_blueprints()))
def test_weight_matching_recovers_a_known_permutation(name, deranged, small_blueprint):
    a = small_blueprint(name).state_dict()
    spaces = model_spaces(small_blueprint(name))
    perms = deranged(spaces, seed=3)
    b = permute_state(a, spaces, perms)
    found, aligned = weight_matching(a, b, spaces, iters=20, seed=0)
    assert found.keys() == perms.keys()
    for key, perm in perms.items():
        assert torch.equal(found[key], torch.argsort(perm)), key
    assert all(torch.equal(aligned[k], a[k]) for k in a)


@pytest.mark.parametrize(
    ("block", "args"),
    [("mix.h3", {"d_state": 8, "heads": 2}), ("mix.lstm", {"bidirectional": True, "layers": 3}), ("mix.mamba", {"dt_rank": 3})],
)
def test_weight_matching_recovers_spaces_that_share_tensors(block, args, deranged):
    """Spaces of one block on one tensor (H3 heads and head dimensions on the same rows, LSTM
    layers, Mamba's x_proj) are solved in turn until they agree."""
    case = make_case(block, args)
    module = case.build(F64)
    spaces = block_spaces(case.spec, case.in_types, case.args, module)
    assert len(spaces) >= 3
    a = module.state_dict()
    perms = deranged(spaces, seed=5)
    found, aligned = weight_matching(a, permute_state(a, spaces, perms), spaces, seed=1)
    assert all(torch.equal(found[k], torch.argsort(p)) for k, p in perms.items())
    assert all(torch.equal(aligned[k], a[k]) for k in a)


def test_weight_matching_raises_the_inner_product_of_two_different_models():
    torch.manual_seed(0)
    a = ssmgraph.build("gpt", d_model=16, layers=2, heads=4, vocab=11, max_len=16).state_dict()
    torch.manual_seed(1)
    model_b = ssmgraph.build("gpt", d_model=16, layers=2, heads=4, vocab=11, max_len=16)
    b, spaces = model_b.state_dict(), model_spaces(model_b)
    found, aligned = weight_matching(a, b, spaces, seed=0)
    names = {name for s in spaces for name, _ in s.bound_axes()}

    def inner(state):
        return sum((a[k].double() * state[k].double()).sum().item() for k in names)

    assert inner(aligned) > inner(b)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in found.values())


def _train_tiny(seed: int, data: list[tuple[torch.Tensor, torch.Tensor]]):
    torch.manual_seed(seed)
    model = ssmgraph.build("classifier", mixer="mix.mamba", d_model=16, layers=2, classes=2, layer_args={"d_state": 4})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in data:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def test_aligning_the_residual_stream_matches_two_trained_models_better_than_internal_spaces_alone():
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(30):
        x = torch.randn(32, 12, 1, generator=gen)
        data.append((x, (x.cumsum(1)[:, -1, 0] > 0).long()))
    a, b = _train_tiny(0, data), _train_tiny(1, data)
    state_a, state_b = a.state_dict(), b.state_dict()
    internal, every = model_spaces(b, residual=False), model_spaces(b)
    assert len(every) > len(internal)

    def inner(state):
        return sum((state_a[k].double() * state[k].double()).sum().item() for k in state_a if k not in b.tied)

    _, internal_only = weight_matching(state_a, state_b, internal, seed=0)
    _, with_residual = weight_matching(state_a, state_b, every, seed=0)
    assert inner(state_b) < inner(internal_only) < inner(with_residual)


# ---- activation matching ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt", "llama", "mamba"])
def test_activation_matching_recovers_a_known_permutation(name, perturbed, deranged, small_blueprint, float64_inputs):
    """B is A with every space permuted: its residual stream and its linear layers' units carry
    A's activations in another order, which the correlations find exactly."""
    a = perturbed(small_blueprint(name))
    spaces = model_spaces(a)
    perms = deranged(spaces, seed=4)
    b = copy.deepcopy(a)
    b.load_state_dict(permute_state(a.state_dict(), spaces, perms))
    inputs = [float64_inputs(a) for _ in range(2)]
    found = activation_matching(a, b, spaces, inputs)
    assert any(isinstance(s, GraphSpace) and s.key in found for s in spaces)
    assert len(found) >= 2
    for key, perm in found.items():
        assert torch.equal(perm, torch.argsort(perms[key])), key


def test_weight_matching_keeps_fixed_spaces_and_solves_the_rest(deranged, small_blueprint):
    a = small_blueprint("gpt").state_dict()
    spaces = model_spaces(small_blueprint("gpt"))
    perms = deranged(spaces, seed=6)
    b = permute_state(a, spaces, perms)
    graph = next(s.key for s in spaces if isinstance(s, GraphSpace))
    found, aligned = weight_matching(a, b, spaces, fixed={graph: torch.argsort(perms[graph])})
    assert all(torch.equal(found[k], torch.argsort(p)) for k, p in perms.items())
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    held, _ = weight_matching(a, b, spaces, fixed={graph: torch.arange(len(perms[graph]))})
    assert torch.equal(held[graph], torch.arange(len(perms[graph])))


def test_weight_matching_brings_two_trained_mlps_into_one_basin():
    """Git Re-Basin's MLP result, reproduced: two ReLU MLPs trained on digits from different
    seeds have a loss barrier on the straight line between them; after weight matching over
    their hidden units it (all but) vanishes."""
    from sklearn.datasets import load_digits

    from ssmgraph.merge.weights import linear

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    width, hidden_layers = 128, 3

    def train(seed: int) -> torch.nn.Sequential:
        torch.manual_seed(seed)
        dims = [64] + [width] * hidden_layers
        layers: list[torch.nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [torch.nn.Linear(d_in, d_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(600):
            batch = torch.randint(0, 1400, (64,), generator=generator)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        return model

    a, b = train(0), train(1)
    state_a, state_b = a.state_dict(), b.state_dict()
    spaces = [
        GraphSpace(
            f"hidden{i}",
            width,
            (PermAxis(f"{2 * i}.weight", 0), PermAxis(f"{2 * i}.bias", 0), PermAxis(f"{2 * i + 2}.weight", 1)),
            (),
        )
        for i in range(hidden_layers)
    ]
    _, aligned = weight_matching(state_a, state_b, spaces)

    def barrier(state_b: dict[str, torch.Tensor]) -> float:
        model, losses = copy.deepcopy(a), []
        for t in torch.linspace(0, 1, 11).tolist():
            model.load_state_dict(linear([state_a, state_b], [1 - t, t]))
            with torch.no_grad():
                losses.append(torch.nn.functional.cross_entropy(model(x[1400:]), y[1400:]).item())
        return max(loss - ((1 - i / 10) * losses[0] + i / 10 * losses[-1]) for i, loss in enumerate(losses))

    naive, after = barrier(state_b), barrier(aligned)
    assert naive > 0.3
    assert after < 0.1 * naive
