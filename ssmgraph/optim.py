"""Optimizer parameter groups that follow the state-space references."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssmgraph.blocks.optim_hints import OPTIM_ATTR


def param_groups(model: nn.Module, *, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Groups for ``torch.optim``: hinted SSM parameters get their own learning rate and no
    weight decay (see :func:`ssmgraph.blocks.optim_hints.mark_optim`); biases and 1-D gains
    (norm weights) get no weight decay, as nanoGPT and the S4/Mamba references do; every
    other parameter gets ``lr`` and ``weight_decay``. Tied parameters appear once.

    The hints are attributes of the parameters, which ``copy.deepcopy`` does not copy: pass
    the model as built or loaded, not a deep copy of it."""
    groups: dict[tuple[tuple[str, float], ...], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        hints = getattr(param, OPTIM_ATTR, None)
        if hints is not None:
            options = {"lr": lr, **hints}
        elif param.ndim < 2:
            options = {"lr": lr, "weight_decay": 0.0}
        else:
            options = {"lr": lr, "weight_decay": weight_decay}
        groups.setdefault(tuple(sorted(options.items())), []).append(param)
    return [{"params": params, **dict(key)} for key, params in groups.items()]
