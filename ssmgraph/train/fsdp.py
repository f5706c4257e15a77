"""Fully sharded data parallelism (``strategy: fsdp``, FSDP2's ``fully_shard``) under torchrun.

Parameters, gradients and optimizer state are sharded over the processes. Each repeated layer
(an entry of a ``repeat`` stack: ``blocks.3``) is one unit, gathered before it runs and freed
after; the rest of the model (embeddings, head) is the root unit. A layer's holder module never
runs itself (the generated forward calls its blocks), so a unit is the list of its blocks'
modules: ``fully_shard([...])`` gathers the unit when the first of them runs. A module or a
tied weight that two layers use stays with the root.

Checkpoints stay what one process writes: the full weights, and the optimizer state keyed by
parameter index (``torch.optim.Optimizer.state_dict``), gathered on every process with
``get_model_state_dict``/``get_optimizer_state_dict`` (``full_state_dict``, ``cpu_offload``) and
written by the main one. A run therefore resumes under any number of processes and strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from ssmgraph.blocks.optim_hints import OPTIM_ATTR
from ssmgraph.graph.model import CompiledModel
from ssmgraph.serialization import weights_to_save
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.lora import checkpoint_weights
from ssmgraph.train.recompute import layer_of, stack_paths

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_strategy(config: TrainConfig, world_size: int) -> None:
    """``fsdp`` shards the model the step calls and the evaluation reads: the settings that wrap it
    (checkpointing, tbptt) or read its whole weights on one process (ema, keep_best) do not go with it."""
    if config.strategy != "fsdp" or world_size == 1:
        return
    clash = [
        f"{key}: {value}"
        for key, value, off in (
            ("checkpointing", config.checkpointing, False),
            ("tbptt", config.tbptt, 0),
            ("ema", config.ema, 0.0),
            ("keep_best", config.keep_best, ""),
        )
        if value != off
    ]
    if clash:
        raise TrainingError(f"strategy fsdp does not go with {', '.join(clash)} yet: turn them off, or use strategy: ddp")


def shard(module: nn.Module) -> nn.Module:
    """Shard ``module`` (a CompiledModel) in place: one unit per repeated layer, then the root."""
    if not isinstance(module, CompiledModel):
        raise TrainingError("strategy fsdp shards the model itself: set checkpointing: false and tbptt: 0 (or use strategy: ddp)")
    hints = {name: getattr(p, OPTIM_ATTR) for name, p in module.named_parameters() if hasattr(p, OPTIM_ATTR)}
    for unit in layer_units(module):
        fully_shard(unit)
    fully_shard(module)
    for name, param in module.named_parameters():  # fully_shard makes new parameters: keep param_groups' hints
        if name in hints:
            setattr(param, OPTIM_ATTR, hints[name])
    return module


def layer_units(model: CompiledModel) -> list[list[nn.Module]]:
    """Per repeated layer, its blocks' modules that hold parameters (see the module docstring)."""
    stacks = list(stack_paths(model.blueprint.body))
    layers_of_module: dict[str, set[str | None]] = {}
    for path, info in model.nodes.items():
        layers_of_module.setdefault(info.module_path, set()).add(layer_of(path, stacks))
    units: dict[str, list[str]] = {}
    for module_path, layers in layers_of_module.items():
        (layer,) = layers if len(layers) == 1 else (None,)  # called from two layers (shared): the root's
        holds_weights = any(True for _ in model.get_submodule(module_path).parameters())
        if layer is not None and layer_of(module_path, stacks) == layer and holds_weights:
            units.setdefault(layer, []).append(module_path)
    while True:  # a weight tied across units (or to the root) stays with the root, with every unit holding it
        unit_of = {path: layer for layer, paths in units.items() for path in paths}
        owners: dict[int, set[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            owner = next((unit_of[p] for p in unit_of if name.startswith(p + ".")), "")
            owners.setdefault(id(param), set()).add(owner)
        mixed = {layer for found in owners.values() if len(found) > 1 for layer in found if layer}
        if not mixed:
            break
        units = {layer: paths for layer, paths in units.items() if layer not in mixed}
    return [[model.get_submodule(path) for path in paths] for paths in units.values()]


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def checkpoint_state(model: CompiledModel, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a checkpoint stores: the weights (tied aliases dropped) and the optimizer state, as one
    process has them. Every process calls it (a sharded model's are gathered); the main one writes."""
    if not is_sharded(model):
        return checkpoint_weights(model, weights_to_save(model, model.tied)), optimizer.state_dict()
    weights, state = full_state(model, optimizer)
    return {k: v for k, v in weights.items() if k not in model.tied}, state


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a checkpoint's optimizer state, into a sharded optimizer too."""
    if is_sharded(model):
        load_optimizer_state(model, optimizer, state)
    else:
        optimizer.load_state_dict(dict(state))


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full weights and the optimizer state in one process's format, on the main process (the
    others get empty ones). Every process must call it: the shards are gathered."""
    weights = get_model_state_dict(model, options=_FULL)
    by_name = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not weights:
        return {}, {}
    index = {name: i for i, name in enumerate(name for group in by_name["param_groups"] for name in group["params"])}
    state = {index[name]: value for name, value in by_name["state"].items()}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load an optimizer state saved by one process (or by :func:`full_state`) into the sharded optimizer."""
    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = state["param_groups"]
    if len(ordered) != sum(len(g["params"]) for g in groups):
        raise ValueError(
            f"the optimizer state holds {sum(len(g['params']) for g in groups)} parameters, the model {len(ordered)}"
        )
    by_name = {
        "state": {ordered[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [ordered[int(i)] for i in g["params"]]} for g in groups],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
