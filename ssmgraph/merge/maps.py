"""Maps between activation spaces, fitted in closed form: X (n×p, model A) → Y (n×q, model B).

Every fit returns a ``LinearMap`` y ≈ W x + b (W q×p, b of length q) that applies to new
points, so it can be judged on held-out data with ``r2_score`` and written into a stitch
layer. The estimators (Csiszárik et al. 2021; Maiorca et al. 2023; Singh & Jaggi 2020):

- ``fit_lstsq``: affine least squares, optionally ridge-regularised;
- ``fit_procrustes``: an orthogonal (semi-orthogonal when p ≠ q) map, optionally scaled;
- ``fit_cca``: least squares restricted to the top canonical directions;
- ``fit_ot``: optimal transport between the two point clouds (no pairing of rows needed),
  turned into a map by an affine fit to the barycentric projection.

All arithmetic is float64; the map comes back in the inputs' (promoted) floating dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearMap:
    """y = x Wᵀ + b, with ``weight`` W of shape q×p and ``bias`` b of length q."""

    weight: Tensor
    bias: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Map ``x`` (…×p) to …×q, in x's dtype."""
        return x @ self.weight.to(x.dtype).T + self.bias.to(x.dtype)


def _pair(X: Tensor, Y: Tensor, paired: bool = True) -> tuple[Tensor, Tensor, torch.dtype]:
    if X.dim() != 2 or Y.dim() != 2:
        raise ValueError(f"maps are fitted on n×p and n×q matrices, got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
    if paired and X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples (rows): got {X.shape[0]} and {Y.shape[0]}")
    dtype = torch.promote_types(X.dtype, Y.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    return X.detach().to(torch.float64), Y.detach().to(torch.float64), dtype


def _finish(weight: Tensor, mean_x: Tensor, mean_y: Tensor, dtype: torch.dtype) -> LinearMap:
    """The affine map through the means: b = ȳ − W x̄."""
    return LinearMap(weight.to(dtype), (mean_y - weight @ mean_x).to(dtype))


def fit_lstsq(X: Tensor, Y: Tensor, ridge: float = 0.0) -> LinearMap:
    """Affine least squares min_{W,b} ‖X Wᵀ + b − Y‖²_F + ridge·‖W‖²_F (the bias is not penalised).

    After centring (which fits b), Wᵀ = (XcᵀXc + ridge·I)⁻¹ XcᵀYc, computed from the thin SVD
    Xc = U S Vᵀ as Wᵀ = V diag(s / (s² + ridge)) Uᵀ Yc. With ridge = 0, singular values below
    n·eps·s_max are dropped: the minimum-norm solution, as ``numpy.linalg.lstsq`` gives.
    ``ridge`` is absolute (in units of Σ x², i.e. n × variance)."""
    x, y, dtype = _pair(X, Y)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    U, s, Vh = torch.linalg.svd(xc, full_matrices=False)
    if ridge > 0:
        inv = s / (s.square() + ridge)
    else:
        cutoff = s.max().clamp_min(1e-300) * max(xc.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
        inv = torch.where(s > cutoff, 1.0 / s.clamp_min(1e-300), torch.zeros_like(s))
    wt = Vh.T @ (inv[:, None] * (U.T @ yc))  # p×q
    return _finish(wt.T, mx, my, dtype)


def fit_procrustes(X: Tensor, Y: Tensor, scale: bool = False) -> LinearMap:
    """Orthogonal Procrustes after centring: min_R ‖Xc R − Yc‖_F over orthogonal R.

    With Xcᵀ Yc = U S Vᵀ, R = U Vᵀ and the map is y ≈ Rᵀ x. When p ≠ q the smaller side is
    zero-padded to d = max(p, q) first (Maiorca et al. 2023) and the d×d map is cropped to q×p:
    its columns are orthonormal when p < q, its rows when p > q. ``scale`` adds the optimal
    isotropic factor c = tr(S) / ‖Xc‖²_F."""
    x, y, dtype = _pair(X, Y)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    p, q = xc.shape[1], yc.shape[1]
    d = max(p, q)
    xp = torch.nn.functional.pad(xc, (0, d - p))
    yp = torch.nn.functional.pad(yc, (0, d - q))
    U, S, Vh = torch.linalg.svd(xp.T @ yp)
    weight = (U @ Vh).T[:q, :p]
    if scale:
        weight = weight * (S.sum() / xc.square().sum().clamp_min(1e-300))
    return _finish(weight, mx, my, dtype)


def _inv_sqrt(c: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag(vals.clamp_min(1e-300).rsqrt()) @ vecs.T


def fit_cca(X: Tensor, Y: Tensor, dims: int | None = None, reg: float = 1e-6) -> tuple[LinearMap, Tensor]:
    """Canonical correlation analysis, and the map A → B through the canonical space.

    With covariances Cxx, Cyy (each plus reg × its mean variance × I) and Cxy, the whitened
    cross-covariance Cxx^{-1/2} Cxy Cyy^{-1/2} = U S Vᵀ gives the canonical directions
    A = Cxx^{-1/2} U (p×k) and B = Cyy^{-1/2} V (q×k), k = ``dims`` (default min(p, q)): the
    canonical variables u = Xc A and v = Yc B have identity covariance and corr(u_i, v_i) = s_i.
    The map predicts v from u (v̂ = diag(s) u, the least-squares prediction) and returns to B's
    space by regressing Yc on v (Ŷc = v Bᵀ Cyy, the least-squares inverse of the B-side
    projection):

        ŷ = ȳ + Cyy B diag(s) Aᵀ (x − x̄).

    With k = min(p, q) and no regularisation this is exactly the least-squares map Cyx Cxx⁻¹;
    a smaller k is the least-squares map through the k most correlated directions only.
    Returns (map, canonical correlations s, descending, in [0, 1])."""
    x, y, dtype = _pair(X, Y)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n, p, q = xc.shape[0], xc.shape[1], yc.shape[1]
    k = min(p, q) if dims is None else max(1, min(int(dims), p, q))
    cxx, cyy, cxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    cxx = cxx + reg * (cxx.trace() / p) * torch.eye(p, dtype=cxx.dtype)
    cyy = cyy + reg * (cyy.trace() / q) * torch.eye(q, dtype=cyy.dtype)
    wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    U, s, Vh = torch.linalg.svd(wx @ cxy @ wy)
    s = s[:k].clamp(0.0, 1.0)
    a, b = wx @ U[:, :k], wy @ Vh[:k].T
    weight = cyy @ b @ torch.diag(s) @ a.T
    return _finish(weight, mx, my, dtype), s.to(dtype)


def _standardised(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-12)


def _subsample(x: Tensor, max_points: int, generator: torch.Generator) -> Tensor:
    if x.shape[0] <= max_points:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:max_points]]


def barycentric_targets(X: Tensor, Y: Tensor, reg: float = 0.05, tol: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Entropic OT between the point clouds X (n×p) and Y (m×q), uniform weights, rows unpaired.

    The cost is the squared Euclidean distance between standardised features (each column to
    mean 0, std 1; the narrower side zero-padded when p ≠ q), divided by its mean so that
    ``reg`` is relative to a typical cost. ``ot.sinkhorn`` gives the plan P (n×m), iterated until
    the column marginals are within ``tol`` (relative, L2) of uniform; each x_i's target is its
    barycentric projection T(x_i) = Σ_j P_ij y_j / Σ_j P_ij (the row normalisation also absorbs
    the remaining row-marginal error). Returns (targets n×q, P), float64.

    The cost compares coordinates of the two spaces directly, so the plan is meaningful only
    where A's and B's features already correspond (up to scale and shift) — e.g. two fine-tunes
    of one model, or after a permutation alignment."""
    try:
        import ot  # POT is an optional dependency (ssmgraph[ot]): imported only for this map
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the optimal-transport map needs the POT library: pip install pot") from err
    x, y, _ = _pair(X, Y, paired=False)
    xs, ys = _standardised(x), _standardised(y)
    d = max(xs.shape[1], ys.shape[1])
    xs = torch.nn.functional.pad(xs, (0, d - xs.shape[1]))
    ys = torch.nn.functional.pad(ys, (0, d - ys.shape[1]))
    cost = torch.cdist(xs, ys).square()
    cost = cost / cost.mean().clamp_min(1e-300)
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    # exp(−cost/reg) underflows for small reg: work in the log domain then.
    method = "sinkhorn" if float(cost.max()) / reg < 300 else "sinkhorn_log"
    stop = tol * float(b.norm())
    plan = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg, method=method, numItermax=5000, stopThr=stop, warn=False)
    plan = torch.as_tensor(plan, dtype=torch.float64)
    mass = plan.sum(1, keepdim=True)
    return (plan @ y) / mass.clamp_min(1e-300), plan


def fit_ot(X: Tensor, Y: Tensor, reg: float = 0.05, max_points: int = 4096, seed: int = 0) -> LinearMap:
    """A map from optimal transport: at most ``max_points`` rows of each side (a seeded random
    subset; X and Y may differ in rows and need not be paired) are matched by
    ``barycentric_targets``, then an affine least-squares fit from X's points to their
    barycentric targets turns the plan into a map that applies to new points. The plan costs
    O(n·m) memory and time per Sinkhorn iteration (4096 points: 130 MiB, a few seconds)."""
    generator = torch.Generator().manual_seed(seed)
    x, y, dtype = _pair(X, Y, paired=False)
    x, y = _subsample(x, max_points, generator), _subsample(y, max_points, generator)
    targets, _ = barycentric_targets(x, y, reg)
    fitted = fit_lstsq(x, targets)
    return LinearMap(fitted.weight.to(dtype), fitted.bias.to(dtype))


def r2_score(pred: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination over all features: 1 − SSE/SST with
    SST = Σ (target − column mean)². 1 for a perfect map, 0 for predicting the mean, negative
    for worse. Fit on one set and score on held-out rows. Leading axes are flattened."""
    return 1.0 - normalized_mse(pred, target)


def normalized_mse(pred: Tensor, target: Tensor) -> Tensor:
    """SSE / SST = mean squared error divided by the target's variance (summed over features);
    1 − ``r2_score``. A float64 scalar (inf when the target is constant and the error is not)."""
    p = pred.detach().to(torch.float64).reshape(-1, pred.shape[-1])
    t = target.detach().to(torch.float64).reshape(-1, target.shape[-1])
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in shape: {tuple(pred.shape)} and {tuple(target.shape)}")
    sse = (p - t).square().sum()
    sst = (t - t.mean(0)).square().sum()
    if float(sst) == 0.0:
        return torch.zeros((), dtype=torch.float64) if float(sse) == 0.0 else torch.tensor(float("inf"), dtype=torch.float64)
    return sse / sst


def random_orthogonal_map(p: int, q: int, seed: int, dtype: torch.dtype = torch.float64) -> LinearMap:
    """A control: a uniformly random (Haar) semi-orthogonal q×p map, zero bias."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(max(p, q), min(p, q), generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(g)
    Q = Q * torch.sign(torch.diagonal(R))  # sign fix: Haar-distributed
    weight = Q if q >= p else Q.T
    return LinearMap(weight.to(dtype), torch.zeros(q, dtype=dtype))
