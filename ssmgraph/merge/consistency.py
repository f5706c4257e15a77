"""The loss terms that train models of different architectures together (`mutual`, `distill`).

Each compares a model's outputs or hidden states with another model's on one batch:

- :func:`kl`: τ² KL(softmax(target/τ) ‖ softmax(logits/τ)) per scored position, optionally
  weighted per position (by the target model's confidence in, or correctness on, the label);
- :func:`feature_loss`: MSE between parameter-free layer norms of the models' taps projected
  into one common width (``<model>.p``, see :mod:`ssmgraph.merge.compose`), layers paired by
  relative depth.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.merge.compose import model_taps
from ssmgraph.merge.context import MergeError
from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks.base import IGNORE, Task

PEER_WEIGHTING = ("uniform", "confidence", "correct")
"""How each position's KL towards a peer is weighted: equally, by the peer's probability of the
true label, or by whether the peer's top prediction is the true label (0 or 1)."""


def kl(target_logits: Tensor, logits: Tensor, tau: float, keep: Tensor | None, weight: Tensor | None = None) -> Tensor:
    """τ² KL(softmax(target/τ) ‖ softmax(logits/τ)), averaged over the scored positions
    (``keep``), each position's term multiplied by ``weight`` when given."""
    target = F.log_softmax(target_logits.float() / tau, -1)
    log_p = F.log_softmax(logits.float() / tau, -1)
    per = (target.exp() * (target - log_p)).sum(-1)
    if weight is not None:
        per = per * weight
    if keep is not None:
        per = per[keep]
    return per.mean() * tau**2


def peer_weight(logits: Tensor, targets: Tensor, how: str) -> Tensor | None:
    """Per-position weights of a peer's KL term from the peer's own logits (detached): its
    probability of the true label (``confidence``) or 1 where its top prediction is right
    (``correct``); None for ``uniform``. Ignored positions get weight 0."""
    if how == "uniform":
        return None
    if how not in PEER_WEIGHTING:
        raise MergeError(f"peer_weighting must be one of {', '.join(PEER_WEIGHTING)}, not {how!r}")
    logits = logits.detach().float()
    safe = targets.clamp_min(0)
    if how == "confidence":
        weight = F.softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    else:
        weight = (logits.argmax(-1) == safe).float()
    return torch.where(targets == IGNORE, torch.zeros_like(weight), weight)


def task_loss(task: Task, logits: Tensor, targets: Tensor) -> Tensor:
    """The task's mean cross-entropy over the scored positions (:func:`batch_sums`' loss / count)."""
    if task.kind not in ("lm", "classify"):
        raise MergeError(f"training models together needs a classification or language-model task, not {task.kind!r}")
    sums = batch_sums(task.kind, logits, targets)
    return sums.loss / sums.count


def depth_pairs(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """Layer i of the shallower model with the layer of the other at the same relative depth."""
    if n_a <= n_b:
        return [(i, round((i + 1) * n_b / n_a) - 1) for i in range(n_a)]
    return [(j, i) for i, j in depth_pairs(n_b, n_a)]


def pair_feature_loss(taps: Mapping[str, Tensor], a: str, b: str) -> list[Tensor]:
    """MSE(LN(P_a h_a), LN(P_b h_b)) for each layer pair of models ``a`` and ``b`` at matched
    relative depth (LN: parameter-free, so the projections cannot collapse to zero)."""
    fa, fb = model_taps(taps, a, "p"), model_taps(taps, b, "p")
    losses = []
    for i, j in depth_pairs(len(fa), len(fb)):
        za = F.layer_norm(fa[i].float(), fa[i].shape[-1:])
        zb = F.layer_norm(fb[j].float(), fb[j].shape[-1:])
        losses.append(F.mse_loss(za, zb))
    return losses


def feature_loss(taps: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """The mean of :func:`pair_feature_loss` over every pair of ``names``."""
    losses = [loss for i, a in enumerate(names) for b in names[i + 1 :] for loss in pair_feature_loss(taps, a, b)]
    return torch.stack(losses).mean()


def split_outputs(out: Tensor | Mapping[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """Each model's logits from a joint model's outputs (``<model>.<output>``)."""
    if not isinstance(out, Mapping):
        return {names[0]: out}
    return {n: next(v for k, v in out.items() if k.startswith(n + ".")) for n in names}


def joint_outputs(
    joint: torch.nn.Module, names: list[str], inputs: Tensor, *, taps: bool
) -> tuple[dict[str, Tensor], Mapping[str, Tensor]]:
    """One pass of a joint model: each model's logits and, with ``taps``, their projected hidden
    states (``<model>.p``; else none)."""
    out, found = joint(inputs, taps=[f"{n}.p" for n in names]) if taps else (joint(inputs), {})
    return split_outputs(out, names), found
