"""LoRA fine-tuning (the ``lora`` setting) through PEFT: low-rank adapters on the blocks' linear layers.

``lora: {r: 8, alpha: 16, targets: [...], dropout: 0.0, merge: false}`` wraps ``nn.Linear``
layers with PEFT's ``lora.Linear`` (``inject_adapter_in_model``: the model stays a
CompiledModel) and trains only the adapters; the other weights are frozen. ``targets`` are glob
patterns over module paths (``blocks.*.mix.*``); without them, every linear layer of the repeated
layers (``repeat`` stacks). A layer whose block reads its weight without calling it
(Mamba's ``dt_proj``) would ignore its adapter: it is skipped, or refused when a target names it.

A checkpoint stores the frozen weights under their own names and each adapter as
``PATH.lora_A``, ``PATH.lora_B`` and ``PATH.lora_scaling`` in the same ``model.safetensors``;
``ssmgraph.load`` merges them (W + scaling * B A, ssmgraph.serialization), so a run's
checkpoint loads, evaluates and exports as a plain model. ``merge: true`` also writes
``RUN/merged/``, a saved model without adapters.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ssmgraph.graph.model import CompiledModel
from ssmgraph.serialization import LORA_A, LORA_B, LORA_SCALING, WEIGHTS_FILE, load, save
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import DAMAGED, TrainingError
from ssmgraph.train.recompute import layer_of, stack_paths

KEYS: dict[str, type | tuple[type, ...]] = {
    "r": int,
    "alpha": (int, float),
    "targets": list,
    "dropout": (int, float),
    "merge": bool,
}
MERGED = "merged"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()
    dropout: float = 0.0
    merge: bool = False


def lora_spec(config: TrainConfig, world_size: int = 1) -> LoraSpec | None:
    """The ``lora`` setting checked (None: off), refused with the settings it cannot go with."""
    raw = config.lora
    if not raw:
        return None
    for key, value in raw.items():
        if key not in KEYS:
            raise TrainingError(f"lora: unknown key {key!r}; lora takes {', '.join(KEYS)}")
        if not isinstance(value, KEYS[key]) or (isinstance(value, bool) and KEYS[key] is not bool):
            raise TrainingError(f"lora.{key}: expected {_names(KEYS[key])}, got {type(value).__name__} {value!r}")
    spec = LoraSpec(
        int(raw.get("r", 8)),
        float(raw.get("alpha", 16.0)),
        tuple(raw.get("targets", ())),
        float(raw.get("dropout", 0.0)),
        raw.get("merge", False),
    )
    if spec.r < 1 or spec.alpha <= 0 or not 0 <= spec.dropout < 1:
        raise TrainingError(
            f"lora: r must be at least 1 (got {spec.r}), alpha above 0 ({spec.alpha}), dropout in [0, 1) ({spec.dropout})"
        )
    if not all(isinstance(t, str) for t in spec.targets):
        raise TrainingError(f"lora.targets: a list of module path patterns such as 'blocks.*.mix.*', got {list(spec.targets)}")
    clash = [k for k, on in (("ema", config.ema > 0), ("keep_best", bool(config.keep_best))) if on]
    if config.strategy == "fsdp" and world_size > 1:
        clash.append("strategy: fsdp")
    if clash:
        raise TrainingError(f"lora does not go with {', '.join(clash)} yet: turn them off, or train without lora")
    return spec


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))


def attach(model: CompiledModel, config: TrainConfig, checkpoint: Path | None = None, world_size: int = 1) -> CompiledModel:
    """Wrap ``model``'s target layers with adapters and freeze the rest (nothing without ``lora``);
    from ``checkpoint`` (a resumed run) the adapters get its tensors."""
    spec = lora_spec(config, world_size)
    if spec is None:
        return model
    try:
        from peft import LoraConfig, inject_adapter_in_model  # deferred: an optional dependency
    except ImportError:
        raise TrainingError("the lora setting needs PEFT: pip install 'ssmgraph[lora]' (or pip install peft)") from None
    targets = target_modules(model, spec)
    settings = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    inject_adapter_in_model(settings, model)
    for name, param in model.named_parameters():
        param.requires_grad_(_is_peft(name))
    if checkpoint is not None:
        with safe_open(str(checkpoint / WEIGHTS_FILE), "pt") as weights:  # the adapters only, not the whole file
            adapters = {k: weights.get_tensor(k) for k in weights.keys() if _is_adapter(k)}  # noqa: SIM118 (safe_open is not iterable)
        load_adapters(model, adapters, checkpoint)
    return model


def target_modules(model: CompiledModel, spec: LoraSpec) -> list[str]:
    """The module paths of the linear layers ``spec.targets`` name (default: the repeated layers')."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    called = _called(model, linear)
    if not spec.targets:
        stacks = list(stack_paths(model.blueprint.body))
        found = [name for name in linear if layer_of(name, stacks) is not None and name in called]
        if not found:
            raise TrainingError(
                f"lora: blueprint {model.blueprint.name!r} has no linear layers in repeated layers; "
                f"name them in lora.targets (its linear layers: {', '.join(linear) or 'none'})"
            )
        return found
    found = []
    for pattern in spec.targets:
        matched = [name for name in linear if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise TrainingError(
                f"lora.targets: {pattern!r} matches no linear layer; the model's are {', '.join(linear[:12])}"
                + (f" and {len(linear) - 12} more" if len(linear) > 12 else "")
            )
        skipped = [name for name in matched if name not in called]
        if skipped:
            raise TrainingError(
                f"lora.targets: {pattern!r} matches {', '.join(skipped)}, whose block reads the weight without calling "
                "the layer (an adapter there would be ignored); narrow the pattern"
            )
        found += [name for name in matched if name not in found]
    return found


@torch.no_grad()
def _called(model: CompiledModel, names: list[str]) -> set[str]:
    """The layers among ``names`` whose forward runs when the model runs (on a tiny example input)."""
    seen: set[str] = set()
    hooks = [model.get_submodule(name).register_forward_hook(lambda *_, name=name: seen.add(name)) for name in names]
    try:
        inputs = []
        for in_type in model.input_types.values():
            shape = [1 if i == 0 else dim if isinstance(dim, int) else 4 for i, dim in enumerate(in_type.shape)]
            inputs.append(torch.zeros(shape, dtype=torch.long if in_type.dtype == "int" else torch.float32))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        model(*[x.to(device) for x in inputs])
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def checkpoint_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's state-dict names turned into a checkpoint's: frozen weights under their own names,
    adapters as ``PATH.lora_A``/``lora_B`` and their ``lora_scaling`` (unchanged without adapters)."""
    if not any(_is_peft(k) for k in weights):
        return dict(weights)
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if _is_peft(key):
            path, part = key.split(".lora_")[0], "A" if ".lora_A." in key else "B"
            out[f"{path}.{LORA_A if part == 'A' else LORA_B}"] = value
            if part == "A":
                out[f"{path}.{LORA_SCALING}"] = torch.tensor(float(model.get_submodule(path).scaling["default"]))
        else:
            out[key.replace(".base_layer.", ".")] = value
    return out


def load_adapters(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
    """Copy a checkpoint's adapter tensors into the attached adapters, every one accounted for."""
    wanted = {name for name, _ in model.named_parameters() if _is_peft(name)}
    state = {}
    for key, value in tensors.items():
        path, part = key.rsplit(".", 1)
        if part == LORA_SCALING:
            continue
        state[f"{path}.{'lora_A' if part == LORA_A else 'lora_B'}.default.weight"] = value
    if state.keys() != wanted:
        raise TrainingError(
            f"{source}: the checkpoint's adapters ({len(state)}) are not those of the run's lora setting ({len(wanted)}); {DAMAGED}"
        )
    model.load_state_dict(state, strict=False)


def _is_peft(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _is_adapter(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in (LORA_A, LORA_B, LORA_SCALING)


def finish(run_dir: Path, config: TrainConfig, interrupted: bool, is_main: bool) -> Path | None:
    """With ``lora.merge``, once the run is complete: ``RUN/merged/``, the adapted model as a plain saved model."""
    if not config.lora or not config.lora.get("merge") or interrupted or not is_main:
        return None
    return save(load(run_dir), run_dir / MERGED)
