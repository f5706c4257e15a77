"""Per-parameter optimizer hints, read by :func:`ssmgraph.param_groups`.

State-space references (state-spaces/s4, mamba) train their SSM parameters (A, Δ, B, C of
the kernel) with a smaller learning rate and no weight decay; a block marks them here.
"""

from __future__ import annotations

from torch import nn

OPTIM_ATTR = "_optim"


def mark_optim(param: nn.Parameter, *, lr: float | None = None, weight_decay: float = 0.0) -> nn.Parameter:
    """Attach optimizer hints to ``param`` (``lr=None`` keeps the group's learning rate)."""
    hints: dict[str, float] = {"weight_decay": weight_decay}
    if lr is not None:
        hints["lr"] = lr
    setattr(param, OPTIM_ATTR, hints)
    return param
