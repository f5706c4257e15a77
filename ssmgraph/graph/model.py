"""The module a blueprint compiles to.

Its sub-modules sit where the blueprint puts them (``blocks.3.mix.qkv.weight``), its
``forward`` is generated code (see :mod:`ssmgraph.graph.codegen`), and models whose blocks
can all run step by step get ``init_state`` / ``step`` / ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blueprint.document import Blueprint
from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.specs import Capabilities, TensorType


class Container(nn.Module):
    """Holds the modules of a group, a stack or a stack layer; never called itself."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - containers are not called
        raise RuntimeError("a container module is not callable")


@dataclass(frozen=True)
class NodeInfo:
    """What the summary, step and merge tools need to know about one block call."""

    path: str
    block: str
    module_path: str
    inputs: tuple[str, ...]
    out_type: TensorType
    caps: Capabilities
    plugin: str
    args: dict[str, Any] = field(hash=False)
    """The block's arguments, defaults filled in (what its factory received)."""
    in_types: tuple[TensorType, ...]
    """The types of its inputs, in port order."""


@dataclass(frozen=True)
class StepCall:
    value: str
    module_path: str
    inputs: tuple[str, ...]
    stateful: bool


class CompiledModel(nn.Module):
    """A blueprint compiled into a module. Build one with :func:`ssmgraph.build`."""

    def __init__(
        self,
        blueprint: Blueprint,
        *,
        view: str | None,
        input_types: dict[str, TensorType],
        outputs: dict[str, str],
        taps: dict[str, str],
        nodes: dict[str, NodeInfo],
        order: Sequence[str],
        tied: dict[str, str],
        forward_fn: Callable[..., Any],
        taps_fn: Callable[..., Any] | None,
        source: str,
    ):
        super().__init__()
        self.blueprint = blueprint
        self.view = view
        self.input_types = input_types
        self.outputs = outputs
        self.tap_sources = taps
        self.nodes = nodes
        self.order = tuple(order)
        self.tied = tied
        self._forward_fn = forward_fn
        self._taps_fn = taps_fn
        self.generated_source = source

    # ---- forward ------------------------------------------------------------------------
    def forward(self, *inputs: Tensor, taps: bool | str | Iterable[str] | None = None, **named: Tensor) -> Any:
        """Run the model. One output → that tensor; several → a dict by output name.

        ``taps=True`` (all) or a list of tap names/prefixes also returns
        ``(outputs, {tap name: tensor})``."""
        if not taps:
            return self._forward_fn(self, *inputs, **named)
        if self._taps_fn is None:
            raise SsmgraphError(f"blueprint {self.blueprint.name!r} defines no taps")
        out, found = self._taps_fn(self, *inputs, **named)
        return out, self._select_taps(found, taps)

    def _select_taps(self, found: dict[str, Tensor], wanted: bool | str | Iterable[str]) -> dict[str, Tensor]:
        if wanted is True:
            return found
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        chosen: dict[str, Tensor] = {}
        for name in names:
            hits = {k: v for k, v in found.items() if k == name or k.startswith(name + ".")}
            if not hits:
                raise SsmgraphError(f"no tap named {name!r}; taps: {', '.join(found) or 'none'}")
            chosen.update(hits)
        return chosen

    @property
    def tap_names(self) -> list[str]:
        return list(self.tap_sources)

    # ---- recurrent decoding -------------------------------------------------------------
    @property
    def supports_step(self) -> bool:
        return not self._step_blockers()

    def _step_blockers(self) -> list[str]:
        used = self._used_nodes()
        return [
            f"{p} ({self.nodes[p].block})"
            for p in self.order
            if p in used and not (self.nodes[p].caps.pointwise or self.nodes[p].caps.step)
        ]

    def _used_nodes(self) -> set[str]:
        used: set[str] = set()
        pending = list(self.outputs.values())
        while pending:
            value = pending.pop()
            if value in used or value not in self.nodes:
                continue
            used.add(value)
            pending.extend(self.nodes[value].inputs)
        return used

    def _step_plan(self) -> list[StepCall]:
        plan = getattr(self, "_plan_cache", None)
        if plan is None:
            blockers = self._step_blockers()
            if blockers:
                raise SsmgraphError(
                    f"model {self.blueprint.name!r} cannot run step by step: {', '.join(blockers)} "
                    "have no recurrent step (use forward on the whole sequence instead)"
                )
            used = self._used_nodes()
            plan = [
                StepCall(p, self.nodes[p].module_path, self.nodes[p].inputs, not self.nodes[p].caps.pointwise)
                for p in self.order
                if p in used
            ]
            self._plan_cache = plan
        return plan

    def init_state(
        self, batch: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Any]:
        """The zero recurrent state of every stateful block, by node path."""
        device = device if device is not None else _first_device(self)
        return {
            call.value: self.get_submodule(call.module_path).init_state(batch, device=device, dtype=dtype)
            for call in self._step_plan()
            if call.stateful
        }

    def step(self, *inputs_t: Tensor, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Advance one position: inputs of shape (B,) for token ids or (B, F) for features.

        Returns the outputs at this position (a tensor, or a dict for several outputs) and
        the new state; O(1) work per token for recurrent blocks (a KV cache for attention)."""
        env: dict[str, Tensor] = {name: x.unsqueeze(1) for name, x in zip(self.input_types, inputs_t)}
        new_state = dict(state)
        for call in self._step_plan():
            module = self.get_submodule(call.module_path)
            args = [env[i] for i in call.inputs]
            if call.stateful:
                y, new_state[call.value] = module.step(*(a.squeeze(1) for a in args), state[call.value])
                env[call.value] = y.unsqueeze(1)
            else:
                env[call.value] = module(*args)
        return self._packed({name: env[value].squeeze(1) for name, value in self.outputs.items()}), new_state

    def forward_with_state(self, *inputs: Tensor, state: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Run whole sequences in parallel, continuing from ``state`` (None: the zero state), and
        return the outputs at every position with the recurrent state after the last one.

        What ``generate`` uses to read a prompt (one parallel pass instead of a step per token),
        and a way to process a long sequence in chunks. Stateful blocks are called with
        ``state=`` and ``return_state=True``, which the block contract requires of them."""
        env: dict[str, Tensor] = dict(zip(self.input_types, inputs))
        new_state: dict[str, Any] = {}
        for call in self._step_plan():
            module = self.get_submodule(call.module_path)
            args = [env[i] for i in call.inputs]
            if call.stateful:
                env[call.value], new_state[call.value] = module(
                    *args, state=None if state is None else state[call.value], return_state=True
                )
            else:
                env[call.value] = module(*args)
        return self._packed({name: env[value] for name, value in self.outputs.items()}), new_state

    @staticmethod
    def _packed(outs: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """One output: the tensor itself; several: the dict by output name (as ``forward``)."""
        return next(iter(outs.values())) if len(outs) == 1 else outs

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` after ``prompt`` (B×T token ids); temperature 0 is greedy."""
        if len(self.input_types) != 1 or next(iter(self.input_types.values())).dtype != "int":
            raise SsmgraphError("generate() needs a model with a single token-id input")
        if len(self.outputs) != 1:
            raise SsmgraphError("generate() needs a model with a single logits output")
        if prompt.ndim == 1:
            prompt = prompt.unsqueeze(0)
        if prompt.shape[1] == 0:
            raise SsmgraphError("generate() needs a prompt of at least one token")
        if top_k is not None and top_k < 1:
            raise SsmgraphError(f"top_k must be at least 1, got {top_k}")
        logits, state = self.forward_with_state(prompt)
        logits = logits[:, -1]
        tokens = [prompt]
        for i in range(max_new_tokens):
            next_token = _sample(logits, temperature, top_k, generator)
            tokens.append(next_token[:, None])
            if i + 1 < max_new_tokens:  # the last token is returned, not read
                logits, state = self.step(next_token, state=state)
        return torch.cat(tokens, dim=1)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _first_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
