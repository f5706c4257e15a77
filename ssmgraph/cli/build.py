"""``ssmgraph build``, ``blocks``, ``plugins``, ``check`` and ``plugin new``: blueprints and the blocks they use.

torch, and every module that imports it (blueprints, graphs, saving, the conformance kit), is
imported inside the commands that use it: `ssmgraph --help` and each command's help must start
without it (tests/cli/test_startup.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssmgraph.cli.errors import user_errors, warn_plugin_problems
from ssmgraph.cli.options import SetOption
from ssmgraph.cli.output import err, listing, params_table, print_json, stdout
from ssmgraph.errors import SsmgraphError, did_you_mean
from ssmgraph.plugin_template import new_plugin
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import BlockSpec


@user_errors
def build(
    blueprint: Annotated[str, typer.Argument(help="A blueprint file, or the name of a shipped one (e.g. `gpt`, `lstm`).")],
    set_: SetOption = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Build one named view of a multi-model blueprint.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Save the built model here (resolved blueprint + safetensors); replaces only a model saved there before.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
    graph: Annotated[
        Path | None, typer.Option("--graph", "-g", help="Draw the graph: .dot, .mmd, or .svg/.png (needs Graphviz).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the initial weights.")] = 0,
) -> None:
    """Check a blueprint, build its model and show a summary.

    Every mistake in the file is reported with its file:line:col. Examples:

    * `ssmgraph build gpt`
    * `ssmgraph build my.yaml --set d_model=256 --set layers=8 --out runs/init`
    * `ssmgraph build pair --model lstm --graph pair.mmd`
    """
    import torch  # deferred, with what needs it: see the module docstring

    from ssmgraph.blueprint import load_blueprint, parse_overrides
    from ssmgraph.graph.compile import compile_blueprint
    from ssmgraph.graph.export import write_graph
    from ssmgraph.graph.summary import summarize, summary_table
    from ssmgraph.serialization import check_replaceable, save

    warn_plugin_problems()
    if out_dir is not None:
        check_replaceable(out_dir)
    torch.manual_seed(seed)
    compiled = compile_blueprint(load_blueprint(blueprint, parse_overrides(set_ or [])), model=model)
    if as_json:
        print_json(summarize(compiled))
    else:
        stdout().print(summary_table(compiled))
    if graph is not None:
        write_graph(compiled, graph)
        err.print(f"graph written to {graph}", highlight=False)
    if out_dir is not None:
        save(compiled, out_dir)
        err.print(f"model saved to {out_dir}", highlight=False)


@user_errors
def blocks(
    pattern: Annotated[
        str,
        typer.Argument(
            help="A block name (shows its parameters), a pattern such as `mix.*`, or part of a name such as `attention`."
        ),
    ] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: a list of {name, role, plugin, params, ...}.")] = False,
) -> None:
    """List the blocks you can use in a blueprint, or show one block's parameters."""
    registry = get_registry()
    warn_plugin_problems()
    exact = registry.get(pattern)
    specs = [exact] if exact else registry.search(pattern)
    if as_json:  # a search that matches nothing is an empty list to a script
        print_json([s.to_json() for s in specs])
        return
    if not specs:
        raise SsmgraphError(f"no block matches {pattern!r}; {did_you_mean(pattern, registry.blocks)}")
    if exact:
        _show_block(exact)
        return
    rows = [(s.name, s.role, s.plugin, str(s.step if isinstance(s.step, bool) else "by args").lower(), s.doc) for s in specs]
    stdout().print(listing(("name", "role", "plugin", "step", "description"), rows, title=f"{len(specs)} blocks"))
    stdout().print("Show one block's parameters with `ssmgraph blocks NAME`.", style="dim")


def _show_block(spec: BlockSpec) -> None:
    caps = ", ".join(f"{k}: {str(v).lower()}" for k, v in spec.to_json()["capabilities"].items())
    stdout().print(f"[bold cyan]{spec.name}[/] ({spec.role}, from {spec.plugin}): {spec.doc}")
    if spec.reference:
        stdout().print(f"reference: {spec.reference}", highlight=False)
    stdout().print(f"inputs: {', '.join(spec.inputs)}{' (two or more)' if spec.variadic else ''} · {caps}", highlight=False)
    stdout().print(params_table(spec.params, key="parameter"))


@user_errors
def plugins(
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print JSON: name, package, version, status, error, blocks, tasks, merge methods, clashes."),
    ] = False,
) -> None:
    """List plugins (built-in and installed through the `ssmgraph` entry-point group) and what each provides."""
    records = list(get_registry().plugins.values())
    if as_json:
        print_json([r.to_json() for r in records])
        return

    def provided(names: list[str], clashes: list[str]) -> str:
        return ", ".join(name + (" (clash)" if name in clashes else "") for name in names)

    rows = [
        (
            r.name.removeprefix("ssmgraph.") + (" (built-in)" if r.builtin else ""),
            r.dist,
            r.version,
            r.status if not r.error else f"{r.status}: {r.error}",
            *(provided(names, r.clashes) for names in (r.blocks, r.tasks, r.merge_methods)),
        )
        for r in records
    ]
    columns = ("plugin", "package", "version", "status", "blocks", "tasks", "merge methods")
    stdout().print(listing(columns, rows, title="plugins", fold=True))


@user_errors
def check(
    block: Annotated[str, typer.Argument(help="The block to check, e.g. `mix.s4d` or a plugin's `mix.my_mixer`.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Build the block with this argument, e.g. `--set heads=2` (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: one {block, check, status, detail} per check.")] = False,
) -> None:
    """Run the conformance kit on a block: does it keep the block contract?

    Checks shapes and dtypes, gradients, causality, step == forward, state carrying, masks,
    state-dict and blueprint round trips, meta-device construction, documentation and
    `torch.compile`, chosen by the capabilities the block declares (docs/plugins.md).
    Without `--set` it checks every argument set the spec lists in `examples`. Exits 1 when
    a check fails. Examples:

    * `ssmgraph check mix.s4d`
    * `ssmgraph check mix.attention --set heads=2 --set rope=true`
    """
    from ssmgraph.blueprint import parse_overrides  # deferred (torch): see the module docstring
    from ssmgraph.testing import CHECKS, block_cases, make_case, run_check

    warn_plugin_problems()
    try:
        cases = [make_case(block, parse_overrides(set_))] if set_ else block_cases([block])
    except ValueError as exc:
        raise SsmgraphError(str(exc)) from None
    results = [(case, run_check(chk, case)) for case in cases for chk in CHECKS]
    failed = sum(result.status == "failed" for _, result in results)
    if as_json:
        print_json([{"block": c.label, "check": r.check, "status": r.status, "detail": r.detail} for c, r in results])
    else:
        style = {"passed": "green", "failed": "bold red", "skipped": "dim"}
        rows = [(case.label, r.check, f"[{style[r.status]}]{r.status}[/]", r.detail) for case, r in results]
        title = f"conformance of {block}: {len(results) - failed} of {len(results)} checks pass or do not apply"
        stdout().print(listing(("configuration", "check", "result", "detail"), rows, title=title, fold=True))
    if failed:
        raise typer.Exit(1)


@user_errors
def plugin_new(
    name: Annotated[
        str, typer.Argument(help="The plugin's name, e.g. `my_mixer`: package ssmgraph-my-mixer, block mix.my_mixer.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The folder to create the package in.")] = Path("."),
) -> None:
    """Write a working block-plugin package to start from.

    It holds a causal depthwise-convolution mixer with a recurrent step, the entry point
    that makes ssmgraph find it, and tests that run the conformance kit. Then:

    * `cd ssmgraph-NAME && pip install -e '.[test]'`
    * `ssmgraph check mix.NAME` and `pytest`
    """
    target = new_plugin(name, out_dir)
    err.print(
        f"plugin package written to {target}; next: cd {target} && pip install -e '.[test]' && pytest",
        markup=False,
        highlight=False,
    )
