"""Permutation spaces: the kinds there are, and what one configured block declares.

Two kinds of spaces:

* **Internal spaces**, declared by block specs (:class:`~ssmgraph.registry.specs.PermSpace`):
  units inside one block (MLP hidden units, attention heads, LSTM cells, Mamba channels, SSM
  modes) whose order the block's output does not depend on. Permuting one changes nothing
  outside its block. Keyed ``"<module path>/<space name>"`` (:class:`BoundSpace`).
* **Graph spaces** (:class:`GraphSpace`): the feature dimension of the values that flow
  between blocks — above all the residual stream (d_model), which every embedding, norm,
  mixer and head of a model reads and writes. A block says how it treats the features of its
  inputs and output with the reserved space names ``"<input>"`` / ``"<input:PORT>"`` (the
  axes that read an input's features), ``"<output>"`` (the axes that write the output's) and
  ``"<through>"`` (input and output share one space: norms, residual adds); :func:`block_io`
  reads these declarations, and :mod:`ssmgraph.merge.permute.model_spaces` joins them over a
  model's graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.specs import INPUT_SPACE, OUTPUT_SPACE, THROUGH_SPACE, BlockSpec, PermAxis, PermSpace, TensorType


class PermSpaceError(SsmgraphError, ValueError):
    """A block declares a permutation space that does not fit its own parameters."""

    code = "E300"


@dataclass(frozen=True)
class BoundSpace:
    """A block's declared space, placed in a model at the block's module path."""

    module: str
    block: str
    space: PermSpace

    @property
    def key(self) -> str:
        return f"{self.module}/{self.space.name}" if self.module else self.space.name

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def ties(self) -> tuple[tuple[str, str], ...]:
        return ()

    def param_key(self, axis: PermAxis) -> str:
        """The state-dict name of the parameter ``axis`` lies in."""
        return f"{self.module}.{axis.param}" if self.module else axis.param

    def bound_axes(self) -> list[tuple[str, PermAxis]]:
        """(state-dict name, axis) of every axis of the space."""
        return [(self.param_key(axis), axis) for axis in self.space.axes]


@dataclass(frozen=True)
class GraphSpace:
    """A feature space shared by several values of a model's graph (the residual stream),
    with the axes of every module that reads or writes it. ``axes`` name full state-dict
    entries (tied tensors by their owner's name); ``ties`` lists (alias, owner) of the tied
    tensors among them, so a permuted owner is copied to its aliases."""

    name: str
    size: int
    axes: tuple[PermAxis, ...]
    values: tuple[str, ...]
    ties: tuple[tuple[str, str], ...] = ()
    doc: str = "the feature dimension of these graph values"

    @property
    def key(self) -> str:
        return self.name

    @property
    def module(self) -> None:
        """None: the space spans modules (its axes name full state-dict entries)."""
        return None

    @property
    def block(self) -> str:
        return ""

    def param_key(self, axis: PermAxis) -> str:
        return axis.param

    def bound_axes(self) -> list[tuple[str, PermAxis]]:
        return [(axis.param, axis) for axis in self.axes]


Space = BoundSpace | GraphSpace


@dataclass(frozen=True)
class BlockIO:
    """A configured block's declarations of its input and output features (reserved names),
    axes relative to its module. ``inputs``: port index → declaration."""

    inputs: Mapping[int, PermSpace] = field(default_factory=dict)
    output: PermSpace | None = None
    through: PermSpace | None = None

    @property
    def declared(self) -> bool:
        return bool(self.inputs) or self.output is not None or self.through is not None


def is_io_space(space: PermSpace) -> bool:
    """Whether ``space`` uses a reserved name (``<input>``, ``<output>``, ``<through>``)."""
    return space.name.startswith("<")


def feature_width(t: TensorType) -> int | None:
    """The size of a float value's feature (last) dimension; None for ids or a symbolic width."""
    last = t.shape[-1] if t.shape else None
    return last if t.dtype == "float" and isinstance(last, int) else None


def _declared(spec: BlockSpec, in_types: Sequence[TensorType], args: Mapping[str, Any]) -> list[PermSpace]:
    return [] if spec.perm_spaces is None else list(spec.perm_spaces(list(in_types), **args))


def _where(spec: BlockSpec, prefix: str) -> str:
    at = f" at {prefix}" if prefix else ""
    return f"block {spec.name}{at} (plugin {spec.plugin or 'unregistered'})"


def _check_axes(spec: BlockSpec, space: PermSpace, state: Mapping[str, Tensor], prefix: str) -> None:
    for axis in space.axes:
        problem = misfit(state, axis.param, axis, space.size, "")
        if problem:
            raise PermSpaceError(
                f"{_where(spec, prefix)} declares permutation space {space.name!r} on {axis.param!r} axis {axis.axis}, but {problem}"
            )


def block_spaces(
    spec: BlockSpec, in_types: Sequence[TensorType], args: Mapping[str, Any], module: nn.Module, prefix: str = ""
) -> list[BoundSpace]:
    """The internal spaces ``spec`` declares for one configured block with two units or more,
    checked against the parameters of ``module`` (its instance, at ``prefix`` in the model).
    Declarations of input/output features (reserved names) are :func:`block_io`'s."""
    state = module.state_dict()
    spaces = []
    for space in _declared(spec, in_types, args):
        if is_io_space(space):
            continue
        _check_axes(spec, space, state, prefix)
        if space.size > 1:
            spaces.append(BoundSpace(prefix, spec.name, space))
    return spaces


def block_io(
    spec: BlockSpec,
    in_types: Sequence[TensorType],
    args: Mapping[str, Any],
    module: nn.Module,
    prefix: str = "",
    out_type: TensorType | None = None,
) -> BlockIO:
    """How one configured block treats the features of its inputs and output: the reserved
    spaces it declares, checked against its parameters and against the feature widths."""
    inputs: dict[int, PermSpace] = {}
    output = through = None
    state = module.state_dict()
    ports = list(range(len(in_types)))

    def fits(space: PermSpace, types: Iterable[TensorType], what: str) -> None:
        for t in types:
            if feature_width(t) != space.size:
                raise PermSpaceError(
                    f"{_where(spec, prefix)} declares {space.name!r} of size {space.size}, but its {what} is {t}"
                )

    for space in _declared(spec, in_types, args):
        if not is_io_space(space):
            continue
        _check_axes(spec, space, state, prefix)
        name = space.name
        if name == THROUGH_SPACE:
            if through is not None:
                raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r} twice")
            fits(space, in_types, "input")
            if out_type is not None:
                fits(space, [out_type], "output")
            through = space
        elif name == OUTPUT_SPACE:
            if output is not None:
                raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r} twice")
            if out_type is not None:
                fits(space, [out_type], "output")
            output = space
        elif name == INPUT_SPACE or (name.startswith("<input:") and name.endswith(">")):
            if name == INPUT_SPACE:
                if len(spec.inputs) > 1 and not spec.variadic:
                    raise PermSpaceError(
                        f"{_where(spec, prefix)} has ports {', '.join(spec.inputs)}: name one, '<input:{spec.inputs[0]}>', not {name!r}"
                    )
                chosen = ports
            else:
                port = name[len("<input:") : -1]
                if port not in spec.inputs or spec.variadic:
                    raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r}, but its ports are {', '.join(spec.inputs)}")
                chosen = [spec.inputs.index(port)]
            for i in chosen:
                if i in inputs:
                    raise PermSpaceError(f"{_where(spec, prefix)} declares the features of input {i} twice")
                fits(space, [in_types[i]], f"input {i}")
                inputs[i] = space
        else:
            raise PermSpaceError(
                f"{_where(spec, prefix)} declares a space named {name!r}: names in <> are reserved for "
                "'<input>', '<input:PORT>', '<output>' and '<through>'"
            )
    if through is not None and (inputs or output is not None):
        raise PermSpaceError(
            f"{_where(spec, prefix)} declares '<through>' together with '<input>' or '<output>': use one or the other"
        )
    return BlockIO(inputs, output, through)


def io_bound_spaces(block: str, io: BlockIO, ports: int, prefix: str = "") -> tuple[list[BoundSpace], dict[int, str], str | None]:
    """One block's feature declarations as spaces of their own (keyed by their reserved names),
    with the key that permutes each declared input port and the output (None: fixed). Permuting
    them together with those inputs' and the output's last dimension leaves the block's
    function unchanged (the conformance kit's check)."""
    spaces: dict[str, BoundSpace] = {}
    inputs: dict[int, str] = {}
    output = None
    if io.through is not None:
        spaces[io.through.name] = BoundSpace(prefix, block, io.through)
        inputs = {port: io.through.name for port in range(ports)}
        output = io.through.name
    for port, space in io.inputs.items():
        spaces.setdefault(space.name, BoundSpace(prefix, block, space))
        inputs[port] = space.name
    if io.output is not None:
        spaces[io.output.name] = BoundSpace(prefix, block, io.output)
        output = io.output.name
    return list(spaces.values()), inputs, output


def misfit(state: Mapping[str, Tensor], name: str, axis: PermAxis, size: int, module: str | None) -> str | None:
    """Why ``size`` units cannot lie where ``axis`` says in ``state[name]`` (None when they can);
    a missing name is reported with the parameters of ``module`` ("" the whole state, None
    the name's parent)."""
    t = state.get(name)
    if t is None:
        if module is None:
            module = name.rsplit(".", 1)[0] if "." in name else ""
        inside = module + "." if module else ""
        params = [k[len(inside) :] for k in state if k.startswith(inside)]
        holder = inside[:-1] or "the module"
        return f"there is no parameter {name!r} ({holder} has {', '.join(params) or 'none'})"
    if not 0 <= axis.axis < t.dim():
        return f"{name!r} of shape {tuple(t.shape)} has no axis {axis.axis}"
    if axis.group < 1 or axis.chunks < 1 or axis.start < 0:
        return f"group {axis.group}, chunks {axis.chunks} and start {axis.start} must be positive (start: at least 0)"
    end = axis.start + axis.chunks * size * axis.group
    if end > t.shape[axis.axis]:
        return (
            f"{axis.chunks} chunk(s) of {size} units of {axis.group} from index {axis.start} end at {end}, "
            f"past the length {t.shape[axis.axis]} of axis {axis.axis} of {name!r} {tuple(t.shape)}"
        )
    return None
