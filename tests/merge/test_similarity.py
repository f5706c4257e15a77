"""Linear CKA: invariances, an independent formula, and the streaming (minibatch) estimator."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssmgraph.merge.similarity import CKAAccumulator, cka_matrix, linear_cka, unbiased_hsic


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _direct(X: np.ndarray, Y: np.ndarray) -> float:
    """‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred columns, written out in numpy."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def _pair(n: int, p: int, q: int, seed: int, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(p, q, generator=g, dtype=torch.float64) + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    return X, Y


def test_invariant_to_orthogonal_maps_and_isotropic_scale():
    X, _ = _pair(300, 12, 1, 0)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=_gen(1), dtype=torch.float64))
    assert float(linear_cka(X, X @ Q)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(X, 3.7 * X)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(X, -0.2 * X + 5.0)) == pytest.approx(1.0, abs=1e-12)  # column shifts are centred away
    # not invariant to a general invertible map
    A = torch.diag(torch.logspace(0, 2, 12, dtype=torch.float64))
    assert float(linear_cka(X, X @ A)) < 0.9


@pytest.mark.parametrize("n,p,q", [(200, 5, 9), (40, 3, 3), (10, 50, 60)])  # the last goes through the n×n Gram route
def test_matches_direct_formula_symmetric_and_in_unit_interval(n, p, q):
    for seed in range(3):
        X, Y = _pair(n, p, q, seed, noise=2.0)
        value = float(linear_cka(X, Y))
        assert value == pytest.approx(_direct(X.numpy(), Y.numpy()), rel=1e-10)
        assert value == pytest.approx(float(linear_cka(Y, X)), rel=1e-12)
        assert 0.0 <= value <= 1.0


def test_float32_input_and_flattened_taps():
    X, Y = _pair(4 * 25, 6, 7, 3)
    expected = float(linear_cka(X, Y))
    assert float(linear_cka(X.float().reshape(4, 25, 6), Y.float().reshape(4, 25, 7))) == pytest.approx(expected, rel=1e-5)
    assert linear_cka(X.float(), Y.float()).dtype == torch.float64


def test_independent_data_gives_small_cka_and_constant_gives_zero():
    g = _gen(4)
    X, Y = torch.randn(5000, 8, generator=g), torch.randn(5000, 8, generator=g)
    assert float(linear_cka(X, Y)) < 0.02
    assert float(linear_cka(X, torch.ones(5000, 3))) == 0.0


def test_rows_must_match():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(10, 2), torch.randn(11, 2))


def test_cka_matrix_is_every_pair():
    feats_a = [_pair(120, d, 1, s)[0] for s, d in enumerate((4, 6, 8))]
    feats_b = [
        feats_a[0] @ torch.randn(4, 5, generator=_gen(9), dtype=torch.float64),
        feats_a[2],
        torch.randn(120, 3, generator=_gen(8), dtype=torch.float64),
    ]
    M = cka_matrix(feats_a, feats_b)
    assert M.shape == (3, 3) and M.dtype == torch.float64
    for i, j in itertools.product(range(3), range(3)):
        assert float(M[i, j]) == pytest.approx(float(linear_cka(feats_a[i], feats_b[j])), rel=1e-12)
    assert float(M[2, 1]) == pytest.approx(1.0)
    assert torch.allclose(torch.diagonal(cka_matrix(feats_a, feats_a)), torch.ones(3, dtype=torch.float64))


def _brute_force_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC₁ as the U-statistic over ordered 4-tuples of distinct indices (Song et al. 2012):
    mean of K_ij L_ij + K_ij L_qr − 2 K_ij L_iq."""
    n = K.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def test_unbiased_hsic_is_the_u_statistic():
    X, Y = _pair(7, 3, 4, 5)
    K, L = (X @ X.T), (Y @ Y.T)
    assert float(unbiased_hsic(K, L)) == pytest.approx(_brute_force_hsic(K.numpy(), L.numpy()), rel=1e-10)
    # the accumulator's feature-space formula agrees with the kernel one
    acc = CKAAccumulator()
    acc.update(X, Y)
    expected = unbiased_hsic(K, L) / (unbiased_hsic(K, K) * unbiased_hsic(L, L)).sqrt()
    assert acc.value() == pytest.approx(min(max(float(expected), 0.0), 1.0), rel=1e-10)


def test_minibatch_matches_full_batch():
    X, Y = _pair(20000, 16, 24, 6, noise=2.0)
    acc = CKAAccumulator()
    for start in range(0, 20000, 500):
        acc.update(X[start : start + 500], Y[start : start + 500])
    assert acc.batches == 40
    assert 0.3 < acc.value() < 0.95  # a non-trivial pair
    assert acc.value() == pytest.approx(float(linear_cka(X, Y)), abs=0.02)


def test_minibatch_invariance_and_independence():
    X, _ = _pair(2000, 10, 1, 7)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=_gen(2), dtype=torch.float64))
    same, independent = CKAAccumulator(), CKAAccumulator()
    g = _gen(3)
    for start in range(0, 2000, 200):
        xb = X[start : start + 200]
        same.update(xb, 2.0 * xb @ Q + 1.0)
        independent.update(xb, torch.randn(200, 10, generator=g, dtype=torch.float64))
    assert same.value() == pytest.approx(1.0, abs=1e-9)
    assert independent.value() < 0.02  # unbiased: no O(d/n) floor


def test_accumulator_errors():
    acc = CKAAccumulator()
    with pytest.raises(ValueError, match="before any update"):
        acc.value()
    with pytest.raises(ValueError, match="at least 4"):
        acc.update(torch.randn(3, 2), torch.randn(3, 2))
