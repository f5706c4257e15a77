"""Activation checkpointing: the forward pass with each layer of a ``repeat`` stack run under
``torch.utils.checkpoint``, so the backward pass recomputes a layer's activations instead of
keeping them (less memory, one more forward of the layers).

A stack ``blocks`` expands to node paths ``blocks.0.mix``, ``blocks.1.mix``, ...; every block
call under ``blocks.<i>.`` is one unit, checkpointed whole (a stack nested in a layer is part
of that layer). Units run in an order that respects the graph, as the generated forward does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch.utils.checkpoint
from torch import Tensor

from ssmgraph.blueprint.document import Body
from ssmgraph.graph.model import CompiledModel
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.step import ModelView


@dataclass(frozen=True)
class Call:
    value: str
    module_path: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Unit:
    """One block call (``layer`` None) or all the calls of one stack layer."""

    layer: str | None
    calls: tuple[Call, ...]
    reads: tuple[str, ...]
    """Values the unit reads from outside itself."""
    gives: tuple[str, ...]
    """Values the unit makes that are read outside it (or are model outputs)."""


def stack_paths(body: Body, prefix: str = "") -> Iterator[str]:
    """The node paths of the outermost ``repeat`` stacks of a blueprint body."""
    for name, decl in body.nodes.items():
        path = f"{prefix}{name}"
        if decl.body is not None and decl.repeat is not None:
            yield path
        elif decl.body is not None:
            yield from stack_paths(decl.body, f"{path}.")


def layer_of(path: str, stacks: list[str]) -> str | None:
    """``blocks.3.mix`` -> ``blocks.3`` when ``blocks`` is a stack."""
    for stack in stacks:
        if path.startswith(stack + "."):
            index = path[len(stack) + 1 :].split(".", 1)[0]
            if index.isdigit():
                return f"{stack}.{index}"
    return None


def plan(model: CompiledModel) -> list[Unit]:
    """The model's block calls grouped into units, in an order that respects the graph."""
    used = model._used_nodes()
    stacks = list(stack_paths(model.blueprint.body))
    calls = [Call(p, model.nodes[p].module_path, model.nodes[p].inputs) for p in model.order if p in used]
    groups: dict[str, list[Call]] = {}
    for call in calls:
        groups.setdefault(layer_of(call.value, stacks) or call.value, []).append(call)
    if all(len(group) == 1 and layer_of(key, stacks) is None for key, group in groups.items()):
        raise TrainingError(
            f"checkpointing: blueprint {model.blueprint.name!r} has no repeated layers (a `repeat:` stack) to recompute; "
            "set checkpointing: false"
        )
    unit_of = {call.value: key for key, group in groups.items() for call in group}
    wanted = set(model.outputs.values())
    readers: dict[str, set[str]] = {}
    for key, group in groups.items():
        for call in group:
            for value in call.inputs:
                if unit_of.get(value, value) != key:
                    readers.setdefault(value, set()).add(key)
    units: dict[str, Unit] = {}
    for key, group in groups.items():
        made = {call.value for call in group}
        reads = tuple(dict.fromkeys(v for call in group for v in call.inputs if v not in made))
        gives = tuple(call.value for call in group if call.value in readers or call.value in wanted)
        units[key] = Unit(key if layer_of(key, stacks) else None, tuple(group), reads, gives)
    return _ordered(units, unit_of)


def _ordered(units: dict[str, Unit], unit_of: dict[str, str]) -> list[Unit]:
    """Units in dependency order (Kahn's algorithm, ties in the order of the model's calls)."""
    pending = {key: {unit_of[v] for v in unit.reads if v in unit_of} for key, unit in units.items()}
    done: list[Unit] = []
    while pending:
        ready = [key for key, needs in pending.items() if not needs]
        if not ready:  # layers that read each other's insides: cannot be separated
            raise TrainingError(f"checkpointing: the layers {', '.join(sorted(pending))} depend on each other's insides")
        for key in ready:
            done.append(units[key])
            del pending[key]
        for needs in pending.values():
            needs.difference_update(ready)
    return done


class Recomputed(ModelView):
    """The model's forward with every stack layer checkpointed."""

    def __init__(self, model: CompiledModel):
        super().__init__(model)
        self.units = plan(model)

    def forward(self, *inputs: Tensor) -> Any:
        model = self._model[0]
        env: dict[str, Tensor] = dict(zip(model.input_types, inputs))
        for unit in self.units:
            if unit.layer is None:
                (call,) = unit.calls
                env[call.value] = model.get_submodule(call.module_path)(*(env[i] for i in call.inputs))
                continue
            outs = torch.utils.checkpoint.checkpoint(self._runner(unit), *(env[v] for v in unit.reads), use_reentrant=False)
            env.update(zip(unit.gives, outs))
        return model._packed({name: env[value] for name, value in model.outputs.items()})

    def _runner(self, unit: Unit) -> Callable[..., tuple[Tensor, ...]]:
        model = self._model[0]

        def run(*values: Tensor) -> tuple[Tensor, ...]:
            env = dict(zip(unit.reads, values))
            for call in unit.calls:
                env[call.value] = model.get_submodule(call.module_path)(*(env[i] for i in call.inputs))
            return tuple(env[v] for v in unit.gives)

        return run
