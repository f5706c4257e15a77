"""DELLA, Model Breadcrumbs and SCE: each against its paper's formula written out here (loops over
entries on small tensors), edge cases, located errors, and mergekit's own code where installed."""

from __future__ import annotations

import textwrap

import pytest
import torch

import ssmgraph
from ssmgraph.errors import BlueprintError
from ssmgraph.merge import sparse_methods as S
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge


def _tensors(count: int = 4, shape: tuple[int, ...] = (5, 7), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(count)]


def _ties_reference(base, deltas, weights, normalize):
    """TIES by hand: per entry, the sign of Σ wᵢδᵢ elected, the agreeing wᵢδᵢ summed (÷ their Σ wᵢ)."""
    out = base.clone().flatten()
    flat = [d.flatten() for d in deltas]
    for j in range(out.numel()):
        values = [w * d[j].item() for w, d in zip(weights, flat)]
        sign = 1.0 if sum(values) >= 0 else -1.0
        agree = [(v, w) for v, w in zip(values, weights) if v != 0 and (v > 0) == (sign > 0)]
        total = sum(v for v, _ in agree)
        divisor = sum(w for _, w in agree) or 1.0
        out[j] += total / divisor if normalize else total
    return out.view_as(base)


def _l1(delta, kept):
    masked = delta * kept
    return masked * (delta.abs().sum() / masked.abs().sum()) if masked.abs().sum() > 0 else masked


# --- DELLA -----------------------------------------------------------------------------------


def test_magprune_keep_probabilities_rise_linearly_with_the_magnitude_rank():
    # ranks by magnitude: 0.3 → 2, -0.1 → 0, 0.2 → 1, 0.4 → 3 (n = 4); p = (d − ε) + 2ε·r/(n − 1)
    row = torch.tensor([[0.3, -0.1, 0.2, 0.4]])
    expected = [0.4 + 0.2 * r / 3 for r in (2, 0, 1, 3)]
    assert torch.allclose(S.magprune_probabilities(row, 0.5, 0.1), torch.tensor([expected]))
    # a 1-D tensor is one row; a row of one entry is kept with probability density
    assert torch.allclose(S.magprune_probabilities(row[0], 0.5, 0.1), torch.tensor(expected))
    assert torch.allclose(S.magprune_probabilities(torch.ones(3, 1), 0.5, 0.1), torch.full((3, 1), 0.5))


def test_magprune_keeps_entries_at_their_rank_probability_on_average():
    row = torch.linspace(-1.0, 1.0, 11)[torch.tensor([5, 0, 10, 3, 7, 1, 9, 2, 8, 4, 6])]
    rows = row.repeat(4000, 1)
    kept = S.magprune(rows, 0.5, 0.2, rescale=False, generator=torch.Generator().manual_seed(0)) != 0
    ranks = row.abs().argsort(stable=True).argsort()
    expected = 0.3 + 0.4 * ranks / 10
    assert torch.allclose(kept.double().mean(0)[row != 0], expected.double()[row != 0], atol=0.03)


def test_della_is_magprune_l1_rescale_then_ties_by_the_papers_steps():
    tensors, weights = _tensors(), [0.5, 1.0, 0.8]
    density, epsilon = 0.6, 0.2
    got = S.della_tensor(
        tensors,
        weights,
        density,
        epsilon,
        ties=True,
        normalize=True,
        rescale=True,
        lam=1.0,
        generator=torch.Generator().manual_seed(7),
    )
    gen, base, deltas = torch.Generator().manual_seed(7), tensors[0], []
    for t in tensors[1:]:  # one Bernoulli draw per entry, model after model
        delta = t - base
        probs = torch.empty_like(delta)
        for i, row in enumerate(delta.abs()):
            order = sorted(range(len(row)), key=lambda j: row[j].item())
            for rank, j in enumerate(order):
                probs[i, j] = density - epsilon + 2 * epsilon * rank / (len(row) - 1)
        deltas.append(_l1(delta, torch.bernoulli(probs, generator=gen)))
    assert torch.allclose(got, _ties_reference(base, deltas, weights, normalize=True), atol=1e-12)


def test_della_linear_is_the_lambda_scaled_weighted_sum():
    tensors, weights = _tensors(), [0.5, 1.0, 0.8]
    gen = torch.Generator().manual_seed(3)
    deltas = [S.magprune(t - tensors[0], 0.5, 0.1, True, gen) for t in tensors[1:]]
    expected = tensors[0] + 0.7 * sum(w * d for w, d in zip(weights, deltas))
    got = S.della_tensor(
        tensors, weights, 0.5, 0.1, ties=False, normalize=False, rescale=True, lam=0.7, generator=torch.Generator().manual_seed(3)
    )
    assert torch.allclose(got, expected, atol=1e-12)


def test_della_density_plus_or_minus_epsilon_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"density ± epsilon must lie inside \(0, 1\)"):
        S.magprune(torch.ones(3, 3), 0.9, 0.15, True, None)
    assert torch.equal(S.magprune(torch.ones(3, 3), 1.0, 0.15, True, None), torch.ones(3, 3))  # density 1: all kept
    assert torch.equal(S.magprune(torch.ones(3, 3), 0.0, 0.15, True, None), torch.zeros(3, 3))  # density 0: none


# --- Model Breadcrumbs -------------------------------------------------------------------------


def test_breadcrumbs_drops_the_largest_gamma_and_the_smallest_entries():
    values = torch.arange(1.0, 21.0) * torch.tensor([1.0, -1.0]).repeat(10)  # 20 distinct magnitudes 1..20
    masked = S.magnitude_outliers(values, density=0.5, gamma=0.1, rescale=False)
    assert sorted(masked[masked != 0].abs().tolist()) == [float(m) for m in range(9, 19)]  # drop 19, 20 and 1..8
    # density + gamma > 1: fewer outliers are dropped so that density remains
    masked = S.magnitude_outliers(values, density=0.95, gamma=0.1, rescale=False)
    assert sorted(masked[masked != 0].abs().tolist()) == [float(m) for m in range(1, 20)]
    rescaled = S.magnitude_outliers(values, density=0.5, gamma=0.1, rescale=True)
    assert torch.isclose(rescaled.abs().sum(), values.abs().sum())  # L1 norm restored


@pytest.mark.parametrize("ties", [False, True])
def test_breadcrumbs_merges_the_masked_task_vectors(ties):
    tensors, weights = _tensors(), [0.5, 1.0, 0.8]
    deltas = [S.magnitude_outliers(t - tensors[0], 0.4, 0.05, rescale=False) for t in tensors[1:]]
    got = S.breadcrumbs_tensor(tensors, weights, 0.4, 0.05, ties=ties, normalize=False, rescale=False, lam=1.0)
    if ties:
        expected = _ties_reference(tensors[0], deltas, weights, normalize=False)
    else:
        expected = tensors[0] + sum(w * d for w, d in zip(weights, deltas))
    assert torch.allclose(got, expected, atol=1e-12)
    kept = (deltas[0] != 0).sum().item()
    assert kept == int(0.4 * 35)


# --- SCE ---------------------------------------------------------------------------------------


def test_sce_selects_by_variance_weighs_by_energy_and_erases_minority_signs():
    tensors, topk = _tensors(), 0.5
    base = tensors[0]
    deltas = [t - base for t in tensors[1:]]
    n = len(deltas)
    flat = [d.flatten().tolist() for d in deltas]
    variance = [sum((f[j] - sum(g[j] for g in flat) / n) ** 2 for f in flat) / n for j in range(base.numel())]
    chosen = set(sorted(range(len(variance)), key=lambda j: -variance[j])[: int(len(variance) * topk)])
    selected = [[v if j in chosen else 0.0 for j, v in enumerate(f)] for f in flat]
    energy = [sum(v * v for v in f) / len(f) for f in selected]
    eta = [e / sum(energy) for e in energy]
    out = base.clone().flatten()
    for j in range(base.numel()):
        sign = 1.0 if sum(f[j] for f in selected) >= 0 else -1.0
        agree = [i for i in range(n) if selected[i][j] != 0 and (selected[i][j] > 0) == (sign > 0)]
        weight = sum(eta[i] for i in agree)
        out[j] += sum(eta[i] * selected[i][j] for i in agree) / max(weight, 1e-6)
    assert torch.allclose(S.sce_tensor(tensors, topk), out.view_as(base), atol=1e-12)


# --- edge cases --------------------------------------------------------------------------------

ALL = {
    "della": lambda ts: S.della_tensor(ts, [1.0] * (len(ts) - 1), 0.5, 0.1, ties=True, normalize=True, rescale=True, lam=1.0),
    "della_linear": lambda ts: S.della_tensor(
        ts, [1.0] * (len(ts) - 1), 0.5, 0.1, ties=False, normalize=False, rescale=True, lam=1.0
    ),
    "breadcrumbs": lambda ts: S.breadcrumbs_tensor(
        ts, [1.0] * (len(ts) - 1), 0.5, 0.1, ties=False, normalize=False, rescale=False, lam=1.0
    ),
    "breadcrumbs_ties": lambda ts: S.breadcrumbs_tensor(
        ts, [1.0] * (len(ts) - 1), 0.5, 0.1, ties=True, normalize=False, rescale=False, lam=1.0
    ),
    "sce": lambda ts: S.sce_tensor(ts, 0.5),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_task_vectors_give_the_base(name):
    base = _tensors(1)[0]
    assert torch.equal(ALL[name]([base, base.clone(), base.clone()]), base)


@pytest.mark.parametrize("name", sorted(ALL))
def test_one_fine_tuned_model_and_scalar_tensors_merge(name):
    base, tuned = _tensors(2, shape=(6,))
    assert ALL[name]([base, tuned]).shape == base.shape
    assert ALL[name]([torch.tensor(0.5), torch.tensor(1.5), torch.tensor(-0.5)]).shape == ()


# --- recipes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed in range(3):
        torch.manual_seed(seed)
        ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32), root / f"m{seed}")
    return root


def _recipe(method: str, parameters: str, root, seed: int = 0):
    text = f"""
        merge_method: {method}
        models: [{{name: a, checkpoint: m0}}, {{name: b, checkpoint: m1}}, {{name: c, checkpoint: m2}}]
        parameters: {parameters}
        seed: {seed}
        """
    return recipe_from_text(textwrap.dedent(text), "merge.yaml", root)


def test_della_with_one_seed_is_reproducible_and_another_seed_differs(saved, tmp_path):
    outs = [
        run_merge(_recipe("della", "{density: 0.5}", saved, seed), tmp_path / f"o{i}", progress=False)[0]
        for i, seed in enumerate((4, 4, 5))
    ]
    states = [ssmgraph.load(o).state_dict() for o in outs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0] if states[0][k].is_floating_point())


def test_della_density_and_epsilon_that_leave_0_1_are_a_merge_error(saved, tmp_path):
    with pytest.raises(MergeError, match=r"merge.yaml: merge method 'della': density ± epsilon .* \[0.75, 1.05\]") as info:
        run_merge(_recipe("della", "{density: 0.9}", saved), tmp_path / "out", progress=False)
    assert info.value.code == "E700" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["della", "breadcrumbs", "breadcrumbs_ties", "della_linear"])
def test_density_out_of_range_is_a_located_recipe_error(saved, method):
    with pytest.raises(BlueprintError) as info:
        _recipe(method, "{density: 1.5}", saved)
    assert "merge.yaml:4:" in str(info.value) and info.value.diagnostics[0].code == "E112"


# --- mergekit ----------------------------------------------------------------------------------


def _mergekit(name: str, tensors: list[torch.Tensor], **params):
    pytest.importorskip("mergekit")
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import PerInputValues, TensorGroup

    per_model = {k: PerInputValues(list(enumerate(v, start=1))) for k, v in params.pop("per_model", {}).items()}
    group = TensorGroup.from_tensors(tensors, base_index=0)
    return registry.get(name).merge_group(group, **params, **per_model)


@pytest.mark.parametrize("name", ["della", "della_linear", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize(("normalize", "rescale", "lam"), [(False, False, 1.0), (True, True, 0.7)])
def test_generalised_task_arithmetic_methods_match_mergekit(name, normalize, rescale, lam):
    tensors, weights = [t.float() for t in _tensors()], [0.3, 0.5, 0.9]
    extra = {"epsilon": 0.2} if name.startswith("della") else {"gamma": 0.1}
    per_model = {"weight": weights, "density": [0.5] * 3, **{k: [v] * 3 for k, v in extra.items()}}
    torch.manual_seed(11)  # mergekit draws DELLA's masks from the global generator, ours from the recipe's
    theirs = _mergekit(
        name, tensors, int8_mask=False, normalize=normalize, rescale=rescale, per_model=per_model, **{"lambda": lam}
    )
    kwargs = {"ties": name in ("della", "breadcrumbs_ties"), "normalize": normalize, "rescale": rescale, "lam": lam}
    if name.startswith("della"):
        ours = S.della_tensor(tensors, weights, 0.5, 0.2, generator=torch.Generator().manual_seed(11), **kwargs)
    else:
        ours = S.breadcrumbs_tensor(tensors, weights, 0.5, 0.1, **kwargs)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.1])
def test_sce_matches_mergekit(topk):
    tensors = [t.float() for t in _tensors()]
    assert torch.allclose(S.sce_tensor(tensors, topk), _mergekit("sce", tensors, int8_mask=False, select_topk=topk), atol=1e-6)
