"""The ``ssmgraph`` command line: a thin face over the library.

Every command is a call into the library; a mistake in the user's input prints a located
message on stderr and exits with code 2, never a traceback. The commands live in one module
per group (build, train, merge, interop); this one makes the Typer app and registers them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ssmgraph.cli import build, interop, merge, train
from ssmgraph.cli.errors import user_errors
from ssmgraph.cli.output import stdout
from ssmgraph.registry.plugins import get_registry
from ssmgraph.version import __version__

app = typer.Typer(
    name="ssmgraph",
    help=(
        "Build, train and merge sequence models declared as YAML blueprints.\n\n"
        "Start with `ssmgraph build gpt` (a shipped blueprint), `ssmgraph blocks` (the blocks you can use) "
        "and docs/blueprint.md (the format)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
plugin_app = typer.Typer(help="Start a block plugin of your own (see docs/plugins.md).", no_args_is_help=True)
import_app = typer.Typer(
    help="Convert another library's checkpoint into an ssmgraph model directory (`ssmgraph import hf --help`).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
export_app = typer.Typer(
    help="Convert an ssmgraph model into another library's checkpoint (`ssmgraph export hf --help`).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@user_errors  # e.g. ssmgraph's own entry points are not installed
def show_version(value: bool) -> None:
    if value:
        plugins = [p for p in get_registry().plugins.values() if not p.builtin]
        extra = ", ".join(f"{p.dist}-{p.version}" + ("" if p.status == "loaded" else f" ({p.status})") for p in plugins)
        stdout().print(f"ssmgraph {__version__}" + (f" (plugins: {extra})" if extra else ""), highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and installed plugins.")
    ] = False,
) -> None:
    """ssmgraph: sequence models as YAML blueprints."""


app.command()(build.build)
app.command()(train.train)
app.command("eval")(train.eval_)
app.command()(train.plot)
app.command()(train.tasks)
app.command()(train.generate)
app.command()(build.blocks)
app.command()(merge.merge)
app.command()(merge.compare)
app.command()(build.check)
app.add_typer(plugin_app, name="plugin")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")
plugin_app.command("new")(build.plugin_new)
import_app.command("hf")(interop.import_hf)
export_app.command("hf")(interop.export_hf)
app.command()(build.plugins)
