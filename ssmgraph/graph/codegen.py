"""Generate a model's ``forward`` as plain Python, through torch.fx's code generator.

The DAG is written out once as straight-line code (``x = self.blocks[0].mix(x)``...), so a
call does no graph interpretation and ``torch.compile`` sees ordinary module calls. fx frees
each intermediate as soon as its last reader has run, like a hand-written forward.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Sequence
from typing import Any

from torch import fx

_counter = itertools.count()


def generate(
    name: str,
    input_names: Sequence[str],
    calls: Sequence[tuple[str, str, Sequence[str]]],
    result: Any,
) -> tuple[Callable[..., Any], str]:
    """Compile ``calls`` — (value id, module path, input value ids) in topological order —
    into ``forward(self, *inputs)`` returning ``result`` with value ids replaced by tensors.

    ``result`` is a value id, or a dict/tuple nesting of them. Returns the function and its source.
    """
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for input_name in input_names:
        env[input_name] = graph.placeholder(input_name)
    for value, module_path, inputs in calls:
        env[value] = graph.call_module(module_path, tuple(env[i] for i in inputs))
    graph.output(_substitute(result, env))
    code = graph.python_code(root_module="self")
    filename = f"<ssmgraph:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["forward"], code.src


def _substitute(result: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(result, str):
        return env[result]
    if isinstance(result, dict):
        return {k: _substitute(v, env) for k, v in result.items()}
    return tuple(_substitute(v, env) for v in result)
