"""Training the superposed model: α (a B-spline over depth) and the autoencoders learn, the
source weights stay frozen.

Each step takes a batch of each model's data (A's language and B's); the loss is the LM loss
on both plus ``recon_weight`` × the reconstruction error of every layer's state against the
state of the specialist whose language the sequence is in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.bspline import BSplineCurve
from ssmgraph.merge.compare import tapped
from ssmgraph.merge.compose import model_taps
from ssmgraph.merge.consistency import task_loss
from ssmgraph.merge.context import MergeContext
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.stitch import layer_stack
from ssmgraph.merge.superpose.model import blends
from ssmgraph.train.fitting import absolute_paths, make_task
from ssmgraph.train.tasks.base import Task


class AlphaAt(nn.Module):
    """A parametrization: a blend's α is the shared curve evaluated at the blend's depth."""

    def __init__(self, curve: nn.Module, depth: float, reduce: bool = False):
        super().__init__()
        self.curve, self.depth, self.reduce = curve, depth, reduce

    def forward(self, original: Tensor) -> Tensor:
        value = self.curve(torch.tensor([self.depth]))[0]
        value = value.mean() if self.reduce else value
        return value.to(original.dtype).expand_as(original).clone() if value.dim() < original.dim() else value.to(original.dtype)


def language_tasks(context: MergeContext) -> tuple[Task, Task]:
    """The recipe's task twice: with A's options (``options_a``) and with B's."""
    data = context.recipe.data
    a, b = (absolute_paths(data.task, context.params[key], context.recipe.directory) for key in ("options_a", "options_b"))
    return make_task(data.task, {**data.options, **a}), make_task(data.task, {**data.options, **b})


@torch.no_grad()
def specialist_states(probe: CompiledModel, name: str, inputs: Tensor, width: int | None = None) -> list[Tensor]:
    """A source model's hidden state after each of its layers (``probe``: the model ``name``
    :func:`tapped`): the reconstruction targets, padded with zeros to ``width`` (the superposed
    state's, where the model is narrower)."""
    _, taps = probe(inputs, taps=[f"{name}.h"])
    states = model_taps(taps, name, "h")
    return [F.pad(h, (0, width - h.shape[-1])) if width else h for h in states]


def recon_error(hidden: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Mean over layers of MSE / the target's variance (a normalised error: 1 = predicting the mean)."""
    return torch.stack([F.mse_loss(h, t) / t.var().clamp_min(1e-8) for h, t in zip(hidden, targets)]).mean()


def layer_states(taps: Mapping[str, Tensor]) -> list[Tensor]:
    """The superposed model's ``hidden`` taps (``hidden.<layer>``) in layer order."""
    return [v for _, v in sorted(taps.items(), key=lambda kv: int(kv[0].rsplit(".", 1)[1]))]


def train_superposed(
    context: MergeContext, model: CompiledModel, a: LoadedModel, b: LoadedModel, tasks: tuple[Task, Task]
) -> list[dict[str, float]]:
    """Train ``model``'s α curve and autoencoders in place (cosine learning rate); afterwards each
    blend holds its α as a plain parameter. Returns the losses, logged every 10 steps."""
    p, layers = context.params, layer_stack(a).layers
    width = model.nodes["embed_blend"].out_type.dim
    n_ctrl = p["control_points"] or math.ceil(layers / 2) + 2
    curve = BSplineCurve(n_ctrl, width=width if p["alpha"] == "vector" else None)
    for param in model.parameters():
        param.requires_grad_(False)
    blend_modules = blends(model, layers)
    for module, depth in blend_modules:
        parametrize.register_parametrization(
            module, "alpha", AlphaAt(curve, depth, reduce=module is blend_modules[-1][0]), unsafe=True
        )
    trainable = [*curve.parameters(), *(q for n, q in model.named_parameters() if ".ae." in n)]
    for q in trainable:
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=p["lr"])
    generator = context.generator(17)
    batch_size = context.recipe.data.batch_size
    log = []
    probes = [(tapped(m.model, m.name), m.name) for m in (a, b)]
    model.train()
    for step in range(p["steps"]):
        lr = p["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / p["steps"])))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch_a, batch_b = (task.sample(batch_size, generator, "train") for task in tasks)
        states = specialist_states(*probes[0], batch_a.inputs, width), specialist_states(*probes[1], batch_b.inputs, width)
        targets = [torch.cat(pair) for pair in zip(*states)]
        inputs, labels = torch.cat([batch_a.inputs, batch_b.inputs]), torch.cat([batch_a.targets, batch_b.targets])
        logits, taps = model(inputs, taps=["hidden"])
        lm, recon = task_loss(tasks[0], logits, labels), recon_error(layer_states(taps), targets)
        loss = lm + p["recon_weight"] * recon
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 10 == 0 or step + 1 == p["steps"]:
            log.append({"step": step + 1, "lm": float(lm.detach()), "recon": float(recon.detach())})
    model.eval()
    for module, _ in blend_modules:
        parametrize.remove_parametrizations(module, "alpha", leave_parametrized=True)
    for q in model.parameters():
        q.requires_grad_(True)
    return log
