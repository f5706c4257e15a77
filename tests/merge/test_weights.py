"""Weight-space merges against closed forms worked out by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.merge import weights as W


def sd(**tensors):
    return {k: torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), rtol=0, atol=1e-12)


# ---- linear and task arithmetic ------------------------------------------------------------------


def test_linear_is_the_normalised_weighted_mean():
    a, b = sd(w=[1.0, 2.0], v=[[0.0]]), sd(w=[3.0, -2.0], v=[[4.0]])
    out = W.linear([a, b], [1.0, 3.0])
    close(out["w"], [(1 + 9) / 4, (2 - 6) / 4])
    close(out["v"], [[3.0]])
    close(W.linear([a, b], [1.0, 3.0], normalize=False)["w"], [10.0, -4.0])
    close(W.linear([a, b], [1.0, 0.0])["w"], [1.0, 2.0])  # linear(1, 0) = A


def test_linear_rejects_weights_that_sum_to_zero():
    with pytest.raises(ValueError, match="sum to 0"):
        W.linear([sd(w=[1.0]), sd(w=[2.0])], [1.0, -1.0])


def test_task_arithmetic_adds_scaled_weighted_task_vectors():
    base, x, y = sd(w=[1.0, 1.0]), sd(w=[2.0, 0.0]), sd(w=[1.0, 5.0])
    # δx = [1, -1], δy = [0, 4]; base + 0.5 (2 δx + 1 δy) = [1 + 1, 1 + 0.5 (-2 + 4)]
    close(W.task_arithmetic(base, [x, y], [2.0, 1.0], scale=0.5)["w"], [2.0, 2.0])


# ---- TIES ----------------------------------------------------------------------------------------

BASE = sd(w=[1.0, 1.0, 1.0, 1.0])
D1 = [3.0, -1.0, 2.0, 0.5]
D2 = [-1.5, -4.0, 1.0, 0.2]
M1 = sd(w=[1 + d for d in D1])
M2 = sd(w=[1 + d for d in D2])


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    # density 0.5 keeps 2 of 4: δ1 → [3, 0, 2, 0], δ2 → [-1.5, -4, 0, 0].
    # weights (1, 1): sums [1.5, -4, 2, 0] elect [+, -, +, +]; agreeing entries:
    # [3 (δ1 only), -4 (δ2 only), 2 (δ1 only), none → 0].
    close(W.ties(BASE, [M1, M2], [1.0, 1.0], density=0.5)["w"], [1 + 3, 1 - 4, 1 + 2, 1 + 0])
    # weights (1, 3): weighted δ2 → [-4.5, -12, 0, 0]; sums [-1.5, -12, 2, 0] elect [-, -, +, +];
    # position 0 keeps 3·(-1.5) divided by the agreeing weight 3.
    close(W.ties(BASE, [M1, M2], [1.0, 3.0], density=0.5)["w"], [1 - 1.5, 1 - 4, 1 + 2, 1])
    # by count, position 0 is a tie of one + and one -, which elects +.
    close(W.ties(BASE, [M1, M2], [1.0, 3.0], density=0.5, majority="count")["w"], [1 + 3, 1 - 4, 1 + 2, 1])


def test_ties_without_normalising_sums_the_agreeing_weighted_entries():
    close(W.ties(BASE, [M1, M2], [1.0, 3.0], density=0.5, normalize=False)["w"], [1 - 4.5, 1 - 12, 1 + 2, 1])


def test_ties_at_full_density_with_agreeing_signs_is_the_weighted_mean_of_task_vectors():
    x, y = sd(w=[2.0, -1.0]), sd(w=[4.0, -3.0])  # from base 0: δx = [2, -1], δy = [4, -3]
    base = sd(w=[0.0, 0.0])
    close(W.ties(base, [x, y], [1.0, 3.0], density=1.0)["w"], [(2 + 12) / 4, (-1 - 9) / 4])


# ---- DARE ----------------------------------------------------------------------------------------


def test_dare_keeps_entries_at_rate_density_rescaled_to_the_task_vectors_l1_norm():
    n, density = 200_000, 0.3
    delta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    base, model = sd(w=torch.zeros(n, dtype=torch.float64)), sd(w=delta)
    out = W.dare(base, [model], [1.0], density=density, generator=torch.Generator().manual_seed(0))["w"]
    kept = out != 0
    # mergekit's rescale_norm l1: kept entries times ‖δ‖₁ / ‖kept δ‖₁
    factor = delta.abs().sum() / delta[kept].abs().sum()
    torch.testing.assert_close(out[kept], delta[kept] * factor, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum(), rtol=1e-12, atol=0)
    assert abs(kept.double().mean().item() - density) < 0.005
    assert abs(factor.item() - 1 / density) < 0.05  # about the paper's 1/p on a large tensor
    plain = W.dare(base, [model], [1.0], density=density, rescale=False, generator=torch.Generator().manual_seed(0))["w"]
    close(plain, torch.where(kept, delta, 0.0))


def test_dare_leaves_a_task_vector_of_tiny_l1_norm_unscaled():
    base, model = sd(w=torch.zeros(100, dtype=torch.float64)), sd(w=torch.full((100,), 1e-10, dtype=torch.float64))
    out = W.dare(base, [model], [1.0], density=0.5, generator=torch.Generator().manual_seed(0))["w"]
    assert set(out.unique().tolist()) == {0.0, 1e-10}  # ‖δ‖₁ = 1e-8 < 1e-7: mergekit does not rescale


def test_dare_is_reproducible_with_a_seed_and_is_task_arithmetic_at_full_density():
    base, x, y = (
        sd(w=torch.randn(50, dtype=torch.float64)),
        sd(w=torch.randn(50, dtype=torch.float64)),
        sd(w=torch.randn(50, dtype=torch.float64)),
    )
    runs = [W.dare(base, [x, y], [0.4, 0.6], density=0.5, generator=torch.Generator().manual_seed(7))["w"] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    full = W.dare(base, [x, y], [0.4, 0.6], density=1.0, generator=torch.Generator().manual_seed(7))["w"]
    close(full, W.task_arithmetic(base, [x, y], [0.4, 0.6])["w"])


def test_dare_ties_sums_the_entries_that_agree_with_the_elected_sign():
    base, x, y = sd(w=[0.0, 0.0]), sd(w=[3.0, -1.0]), sd(w=[-1.0, -4.0])
    # nothing dropped at density 1; sums [2, -5] elect [+, -]; agreeing sums, not means: [3, -5]
    out = W.dare(base, [x, y], [1.0, 1.0], density=1.0, sign_election=True, generator=torch.Generator().manual_seed(0))
    close(out["w"], [3.0, -5.0])


def test_merging_a_model_with_copies_of_itself_gives_it_back():
    model = sd(w=torch.randn(3, 4, dtype=torch.float64))
    for merged in (
        W.linear([model, model], [0.3, 0.7]),
        W.task_arithmetic(model, [model, model], [0.5, 0.5]),
        W.ties(model, [model, model], [0.5, 0.5], density=0.5),
        W.dare(model, [model], [1.0], density=0.5, sign_election=True, generator=torch.Generator().manual_seed(0)),
        W.slerp(model, model, 0.4),
    ):
        close(merged["w"], model["w"])


# ---- SLERP ---------------------------------------------------------------------------------------


def test_slerp_endpoints_and_the_angle_formula():
    phi = 1.0
    a, b = sd(w=[1.0, 0.0, 0.0]), sd(w=[math.cos(phi), math.sin(phi), 0.0])
    close(W.slerp(a, b, 0.0)["w"], a["w"])
    close(W.slerp(a, b, 1.0)["w"], b["w"])
    for t in (0.25, 0.5, 0.8):
        out = W.slerp(a, b, t)["w"]
        close(out, [math.cos(t * phi), math.sin(t * phi), 0.0])  # along the great circle
        assert abs(out.norm().item() - 1.0) < 1e-12


def test_slerp_weights_the_tensors_themselves_by_the_angle_of_their_directions():
    a, b = sd(w=[[2.0, 0.0]]), sd(w=[[0.0, 3.0]])  # θ = π/2, sin θ = 1
    t = 0.3
    close(W.slerp(a, b, t)["w"], [[2.0 * math.sin(0.7 * math.pi / 2), 3.0 * math.sin(0.3 * math.pi / 2)]])


def test_slerp_falls_back_to_lerp_for_nearly_colinear_tensors():
    a, b = sd(w=[1.0, 2.0]), sd(w=[2.0, 4.0001])
    close(W.slerp(a, b, 0.25)["w"], [0.75 * 1.0 + 0.25 * 2.0, 0.75 * 2.0 + 0.25 * 4.0001])


# ---- what is not averaged, and mistakes --------------------------------------------------------


def test_integer_tensors_and_kept_names_come_from_the_first_model_and_dtypes_are_kept():
    a = {
        "w": torch.tensor([1.0, 2.0], dtype=torch.float16),
        "steps": torch.tensor(3),
        "mask": torch.tensor([True, False]),
        "buf": torch.tensor([5.0]),
    }
    b = {
        "w": torch.tensor([3.0, 4.0], dtype=torch.float16),
        "steps": torch.tensor(9),
        "mask": torch.tensor([False, True]),
        "buf": torch.tensor([7.0]),
    }
    out = W.linear([a, b], [1.0, 1.0], keep={"buf"})
    assert out["w"].dtype == torch.float16 and out["w"].tolist() == [2.0, 3.0]
    assert out["steps"].item() == 3 and out["mask"].tolist() == [True, False] and out["buf"].item() == 5.0
    out = W.ties(a, [b], [1.0], density=1.0)
    assert out["steps"].item() == 3 and out["buf"].item() == 7.0


def test_different_names_or_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"model 1 does not have the tensors of model 0: it lacks v and has extra u"):
        W.linear([sd(w=[1.0], v=[1.0]), sd(w=[1.0], u=[1.0])], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"w: shape \(2,\) in the base but \(3,\) in model 2"):
        W.task_arithmetic(sd(w=[1.0, 2.0]), [sd(w=[1.0, 2.0]), sd(w=[1.0, 2.0, 3.0])], [1.0, 1.0])
    with pytest.raises(ValueError, match="2 weights for 1 models besides the base"):
        W.ties(sd(w=[1.0]), [sd(w=[1.0])], [1.0, 1.0], density=0.5)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        W.dare(sd(w=[1.0]), [sd(w=[1.0])], [1.0], density=0.0)


# ---- the fast paths give the reference results bit for bit ----------------------------------------


def _argsort_mask(delta, density):
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[torch.argsort(delta.abs().flatten(), descending=True)[:k]] = True
    return mask.view_as(delta)


@pytest.mark.parametrize("kind", ["randn", "scaled_rows", "ties", "zeros", "nan"])
def test_top_magnitude_mask_selects_exactly_argsorts_top_k(kind):
    """Selection (sampled bracket, kthvalue) where no tie straddles the k-th place, argsort where one does."""
    gen = torch.Generator().manual_seed(0)
    n = 8 * W.SAMPLE + 12345  # past the sampled bracket's threshold
    delta = {
        "randn": lambda: torch.randn(n, generator=gen),
        "scaled_rows": lambda: torch.randn(n // 100, 100, generator=gen) * torch.logspace(-3, 3, n // 100).view(-1, 1),
        "ties": lambda: torch.randint(-3, 4, (n,), generator=gen).float(),
        "zeros": lambda: torch.cat([torch.zeros(n // 2), torch.randn(n - n // 2, generator=gen)]),
        "nan": lambda: torch.cat([torch.randn(n, generator=gen), torch.tensor([math.nan])]),
    }[kind]()
    for density in (1e-5, 0.1, 0.5, 0.9):
        assert torch.equal(W.top_magnitude_mask(delta, density), _argsort_mask(delta, density)), density


@pytest.mark.parametrize("majority", ["sum", "count"])
@pytest.mark.parametrize("normalize", [True, False])
def test_consensus_in_place_is_bitwise_the_out_of_place_one(majority, normalize):
    gen = torch.Generator().manual_seed(1)
    deltas = torch.randint(-2, 3, (3, 40, 30), generator=gen).float() * torch.rand(3, 40, 30, generator=gen)
    weights = [0.5, -0.25, 1.0]
    expected = W.consensus(deltas, weights, majority, normalize)
    got = W.consensus(deltas.clone(), weights, majority, normalize, inplace=True)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # signed zeros included
