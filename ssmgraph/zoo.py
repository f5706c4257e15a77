"""``create_model``: a model-zoo API, built on the shipped blueprints.

    model = create_model(architecture="h3", ssm_layer="s4", d_model=256, d_state=64, num_layers=4)

Every model it returns is an ordinary compiled blueprint, so ``ssmgraph.save`` writes it as a
blueprint plus weights and ``model.blueprint`` holds the resolved graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import SsmgraphError, did_you_mean
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel


@dataclass(frozen=True)
class Architecture:
    blueprint: str
    ssm_layers: tuple[str, ...] = ()
    """Accepted ``ssm_layer`` values (the first is the default); empty: takes none."""
    layer_param: str | None = "layer_args"
    """The blueprint parameter that receives the mixer's arguments."""


ARCHITECTURES: dict[str, Architecture] = {
    "transformer": Architecture("seq2seq", layer_param=None),
    "gpt": Architecture("gpt", layer_param=None),
    "llama": Architecture("llama", layer_param=None),
    "lstm": Architecture("lstm", layer_param=None),
    "mamba": Architecture("mamba", ("mamba",)),
    "s4": Architecture("s4", ("s4",)),
    "s4d": Architecture("s4d", ("s4d",)),
    "s5": Architecture("s5", ("s5",)),
    "h3": Architecture("h3", ("s4d", "s4"), layer_param=None),
    "gated_mlp": Architecture("gated_mlp", ("s4d", "s4")),
    "hybrid": Architecture("hybrid", ("mamba",), layer_param=None),
}

# create_model's keyword names → blueprint parameter names.
_ARCH_ALIASES = {"num_heads": "heads", "max_seq_len": "max_len", "vocab_size": "vocab"}


def create_model(
    architecture: str,
    ssm_layer: str | None = None,
    *,
    d_model: int = 128,
    d_state: int | None = None,
    num_layers: int = 4,
    layer_kwargs: Mapping[str, Any] | None = None,
    architecture_kwargs: Mapping[str, Any] | None = None,
) -> CompiledModel:
    """Build one of the zoo's architectures from its shipped blueprint.

    ``layer_kwargs`` go to the sequence mixer of every layer (e.g. ``{"init": "legs"}`` for
    S4D); ``architecture_kwargs`` override blueprint parameters (``heads``/``num_heads``,
    ``max_len``/``max_seq_len``, ``vocab``, ...). ``num_layers`` sets the layer count (for the
    encoder–decoder transformer, of both stacks)."""
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise SsmgraphError(f"unknown architecture {architecture!r}; {did_you_mean(architecture, ARCHITECTURES)}")
    if ssm_layer is not None and ssm_layer not in arch.ssm_layers:
        allowed = ", ".join(arch.ssm_layers) or "none (it has no SSM layer)"
        raise SsmgraphError(f"architecture {architecture!r} takes ssm_layer in: {allowed}; got {ssm_layer!r}")
    overrides: dict[str, Any] = {"d_model": d_model}
    for key, value in (architecture_kwargs or {}).items():
        overrides[_ARCH_ALIASES.get(key, key)] = value
    if arch.blueprint == "seq2seq":
        overrides.update(enc_layers=num_layers, dec_layers=num_layers)
    else:
        overrides["layers"] = num_layers
    layer_args = dict(layer_kwargs or {})
    if architecture == "h3":
        overrides["inner"] = ssm_layer or arch.ssm_layers[0]
        if d_state is not None:
            overrides["d_state"] = d_state
        if layer_args:
            raise SsmgraphError("h3 takes its SSM settings as d_state= and ssm_layer=; layer_kwargs are not supported")
    elif arch.layer_param is not None:
        blueprint = load_blueprint(arch.blueprint)
        layer_args = {**blueprint.params.get(arch.layer_param, {}), **layer_args}
        if d_state is not None:
            layer_args["d_state"] = d_state
        if architecture == "gated_mlp" and ssm_layer is not None:
            layer_args["ssm"] = ssm_layer
        overrides[arch.layer_param] = layer_args
    elif d_state is not None and "d_state" in load_blueprint(arch.blueprint).params:
        overrides["d_state"] = d_state
    elif d_state is not None or layer_args:
        raise SsmgraphError(f"architecture {architecture!r} has no SSM layer: d_state and layer_kwargs do not apply")
    return compile_blueprint(load_blueprint(arch.blueprint, overrides))
