"""Model Stock, NuSLERP, Multi-SLERP, Karcher mean and NearSwap: each against its formula written
out here on small tensors (angles on a circle where the answer is known in closed form), edge
cases, recipe errors, and mergekit's own code where installed."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

import ssmgraph
from ssmgraph.errors import BlueprintError
from ssmgraph.merge import sphere_methods as S
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge


def _tensors(count: int = 4, shape: tuple[int, ...] = (5, 7), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(count)]


def _circle(angle: float, radius: float = 1.0) -> torch.Tensor:
    return torch.tensor([radius * math.cos(angle), radius * math.sin(angle)], dtype=torch.float64)


# --- Model Stock -------------------------------------------------------------------------------


def _model_stock_reference(base, tuned):
    """Jang et al. 2024, eq. (3): t = k cos θ / (1 + (k − 1) cos θ), θ = t·w̄ + (1 − t)·w₀; cos θ
    the mean cosine between pairs of task vectors."""
    deltas = [(t - base).flatten().tolist() for t in tuned]
    cosines = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            a, b = deltas[i], deltas[j]
            dot = sum(x * y for x, y in zip(a, b))
            cosines.append(dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))))
    cos, k = sum(cosines) / len(cosines), len(tuned)
    t = k * cos / (1 + (k - 1) * cos)
    return t * sum(tuned) / k + (1 - t) * base


@pytest.mark.parametrize("k", [2, 3])
def test_model_stock_interpolates_by_the_papers_ratio(k):
    base, *tuned = _tensors(k + 1)
    tuned = [base + 0.5 * tuned[0] + 0.3 * t for t in tuned]  # correlated task vectors: cos θ > 0
    assert torch.allclose(S.model_stock_tensor([base, *tuned]), _model_stock_reference(base, tuned), atol=1e-12)


def test_model_stock_filter_wise_takes_one_ratio_per_row():
    base, *tuned = _tensors(4)
    tuned = [base + 0.5 * tuned[0] + 0.3 * t for t in tuned]
    rows = [_model_stock_reference(base[i], [t[i] for t in tuned]) for i in range(base.shape[0])]
    assert torch.allclose(S.model_stock_tensor([base, *tuned], filter_wise=True), torch.stack(rows), atol=1e-12)


def test_model_stock_edge_cases():
    base, a = _tensors(2)
    assert torch.allclose(S.model_stock_tensor([base, a, a.clone()]), a)  # identical models: cos θ = 1, t = 1
    assert torch.equal(S.model_stock_tensor([base, base.clone(), base.clone()]), base)  # zero task vectors: t = 0
    assert torch.equal(S.model_stock_tensor([base, base + a, base - a]), base)  # opposite: 1 + (k − 1) cos θ = 0
    with pytest.raises(ValueError, match="at least 2 models besides the base"):
        S.model_stock_tensor([base, a])


# --- NuSLERP -----------------------------------------------------------------------------------


def test_nuslerp_moves_along_the_great_circle_by_the_weight_ratio():
    v0, v1 = _circle(0.0, 2.0), _circle(math.pi / 2, 2.0)  # t = w₁ / (w₀ + w₁) = 0.25
    assert torch.allclose(S.nuslerp_tensor([v0, v1], [3.0, 1.0], base=False), _circle(math.pi / 8, 2.0))
    base = torch.tensor([1.0, -1.0], dtype=torch.float64)
    got = S.nuslerp_tensor([base, base + v0, base + v1], [3.0, 1.0], base=True)
    assert torch.allclose(got, base + _circle(math.pi / 8, 2.0))
    assert torch.allclose(S.nuslerp_tensor([v0, v1], [0.0, 0.0], base=False), _circle(math.pi / 4, 2.0))  # t = 0.5


def test_nuslerp_rows_and_columns():
    a = torch.stack([_circle(0.0), _circle(0.2)])
    b = torch.stack([_circle(math.pi / 2), _circle(1.2)])
    rows = S.nuslerp_tensor([a, b], [1.0, 1.0], base=False, flatten=False)
    assert torch.allclose(rows, torch.stack([_circle(math.pi / 4), _circle(0.7)]))
    columns = S.nuslerp_tensor([a.T, b.T], [1.0, 1.0], base=False, flatten=False, row_wise=True)
    assert torch.allclose(columns, rows.T)
    colinear = S.nuslerp_pair(0.25, a, 3 * a, flatten=False)  # cos θ = 1: linear
    assert torch.allclose(colinear, 1.5 * a)


# --- Multi-SLERP -------------------------------------------------------------------------------


def test_multislerp_of_two_points_on_a_circle_is_the_weighted_tangent_average():
    # μ bisects the directions (angle π/4); the tangent vectors cancel, so the result is μ·Σ wᵢ‖xᵢ‖
    got = S.multislerp_tensor([_circle(0.0, 1.0), _circle(math.pi / 2, 3.0)], [1.0, 1.0], base=False)
    assert torch.allclose(got, _circle(math.pi / 4, 2.0))


def test_multislerp_follows_its_formula():
    points, weights = _tensors(3), [0.2, 0.5, 0.3]
    flat = [p.flatten() for p in points]
    units = [f / f.norm() for f in flat]
    mu = sum(w * u for w, u in zip(weights, units))
    mu = mu / mu.norm()
    tau = sum(w * (u - (u @ mu) * mu) for w, u in zip(weights, units))
    expected = (mu * math.cos(tau.norm()) + tau * math.sin(tau.norm()) / tau.norm()) * sum(
        w * f.norm() for w, f in zip(weights, flat)
    )
    assert torch.allclose(S.multislerp_tensor(points, weights, base=False), expected.view(5, 7), atol=1e-7)


def test_multislerp_edge_cases():
    a = _tensors(1)[0]
    assert torch.allclose(S.multislerp_tensor([a, a.clone(), a.clone()], [1.0, 2.0, 3.0], base=False), a)
    zero = torch.zeros(4)
    assert torch.equal(S.multislerp_tensor([zero, zero.clone(), zero.clone()], [1.0, 1.0, 1.0], base=False), zero)
    assert torch.allclose(S.multislerp_tensor([a, -a], [1.0, 1.0], base=False), torch.zeros_like(a))  # two antipodal: linear
    with pytest.raises(ValueError, match="weighted mean of the models' directions is zero"):
        S.multislerp_tensor([a, -a, 2 * a, -2 * a], [1.0] * 4, base=False)


# --- Karcher -----------------------------------------------------------------------------------


def test_karcher_mean_on_a_circle_is_the_mean_angle():
    angles, radii = [0.0, 0.5, 1.3], [1.0, 2.0, 4.5]
    got = S.karcher_tensor([_circle(a, r) for a, r in zip(angles, radii)], max_iter=100, tol=1e-12)
    assert torch.allclose(got, _circle(sum(angles) / 3, sum(radii) / 3), atol=1e-9)


def test_karcher_edge_cases():
    a = _tensors(1)[0]
    assert torch.equal(S.karcher_tensor([a]), a)
    assert torch.allclose(S.karcher_tensor([a, a.clone()]), a)
    zero = torch.zeros(3)
    assert torch.equal(S.karcher_tensor([zero, zero.clone()]), zero)
    # a zero tensor has no direction: it is left out of the mean but counts in the mean norm
    assert torch.allclose(S.karcher_tensor([_circle(0.0, 2.0), torch.zeros(2, dtype=torch.float64)]), _circle(0.0, 1.0))


# --- NearSwap ----------------------------------------------------------------------------------


def test_nearswap_swaps_near_entries_and_moves_far_ones_by_t_over_the_distance():
    base = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    other = torch.tensor([0.05, -1.0, 1.0, 6.0], dtype=torch.float64)
    # |diff| = 0.05 < t: swapped; 1.0: w = 0.1; 0 (equal): swapped; 4.0: w = 0.025
    expected = torch.tensor([0.05, -0.1, 1.0, 2.0 + 0.025 * 4.0], dtype=torch.float64)
    assert torch.allclose(S.nearswap_tensor(base, other, 0.1), expected)
    assert torch.equal(S.nearswap_tensor(base, other, 0.0), base)


# --- recipes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed in range(3):
        torch.manual_seed(seed)
        ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32), root / f"m{seed}")
    return root


def _recipe(method: str, count: int, root, extra: str = ""):
    models = ", ".join(f"{{name: m{i}, checkpoint: m{i}}}" for i in range(count))
    return recipe_from_text(textwrap.dedent(f"merge_method: {method}\nmodels: [{models}]\n{extra}"), "merge.yaml", root)


@pytest.mark.parametrize(
    ("method", "count", "extra"),
    [
        ("model_stock", 3, "parameters: {filter_wise: true}\n"),
        ("nearswap", 2, "parameters: {t: 0.01}\n"),
        ("nuslerp", 2, ""),
        ("nuslerp", 3, "base_model: m0\n"),
        ("multislerp", 3, ""),  # tensors that are zero in every model (biases) stay zero
        ("multislerp", 3, "base_model: m0\n"),
        ("karcher", 3, ""),
    ],
)
def test_each_method_merges_saved_models(saved, tmp_path, method, count, extra):
    out, _ = run_merge(_recipe(method, count, saved, extra), tmp_path / "out", progress=False)
    merged = ssmgraph.load(out).state_dict()
    assert all(torch.isfinite(t).all() for t in merged.values() if t.is_floating_point())


def test_recipe_mistakes_are_located_errors(saved, tmp_path):
    with pytest.raises(BlueprintError) as info:  # model_stock needs a base and two fine-tuned models
        _recipe("model_stock", 2, saved)
    assert "merge.yaml:" in str(info.value)
    with pytest.raises(BlueprintError) as info:  # nearswap's t has no default, as in mergekit
        _recipe("nearswap", 2, saved)
    assert info.value.diagnostics[0].code == "E111"
    with pytest.raises(MergeError, match=r"merge.yaml: merge method 'nuslerp' interpolates exactly 2 models, got 3") as err:
        run_merge(_recipe("nuslerp", 3, saved), tmp_path / "out", progress=False)
    assert err.value.code == "E700" and not (tmp_path / "out").exists()


# --- mergekit ----------------------------------------------------------------------------------


def _mergekit(name: str, tensors: list[torch.Tensor], base: bool = True, weights: list[float] | None = None, **params):
    pytest.importorskip("mergekit")
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import PerInputValues, TensorGroup

    if weights is not None:
        params["weight"] = PerInputValues(list(enumerate(weights, start=1 if base else 0)))
    group = TensorGroup.from_tensors(tensors, base_index=0 if base else None)
    return registry.get(name).merge_group(group, **params)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_matches_mergekit(filter_wise):
    tensors = [t.float() for t in _tensors()]
    theirs = _mergekit("model_stock", tensors, filter_wise=filter_wise)
    assert torch.allclose(S.model_stock_tensor(tensors, filter_wise), theirs, atol=1e-6)


@pytest.mark.parametrize("base", [False, True])
@pytest.mark.parametrize(("flatten", "row_wise"), [(True, False), (False, False), (False, True)])
def test_nuslerp_matches_mergekit(base, flatten, row_wise):
    tensors, weights = [t.float() for t in _tensors(3 if base else 2)], [0.3, 0.9]
    theirs = _mergekit("nuslerp", tensors, base, weights, nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
    ours = S.nuslerp_tensor(tensors, weights, base=base, row_wise=row_wise, flatten=flatten)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("base", [False, True])
def test_multislerp_matches_mergekit(base):
    tensors, weights = [t.float() for t in _tensors(4)], [0.2, 0.5, 0.9] + ([] if base else [0.4])
    theirs = _mergekit("multislerp", tensors, base, weights, normalize_weights=True, eps=1e-8)
    assert torch.allclose(S.multislerp_tensor(tensors, weights, base=base), theirs, atol=1e-6)


def test_karcher_and_nearswap_match_mergekit():
    tensors = [t.float() for t in _tensors()]
    assert torch.allclose(S.karcher_tensor(tensors, 10, 1e-5), _mergekit("karcher", tensors, max_iter=10, tol=1e-5), atol=1e-6)
    a, b = tensors[:2]
    assert torch.allclose(S.nearswap_tensor(a, b, 0.5), _mergekit("nearswap", [a, b], t=0.5), atol=1e-6)
