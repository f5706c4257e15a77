"""`ssmgraph --help` starts fast: neither the app nor any command's help imports torch.

Run in a fresh interpreter (this one has torch loaded by other tests): the CLI modules import
torch-heavy code inside their commands, and the package root exposes its API lazily.
"""

from __future__ import annotations

import json
import subprocess
import sys

import ssmgraph

HELP_EVERYWHERE = """
import json, sys
from typer.main import get_command
from typer.testing import CliRunner
import ssmgraph.cli

def paths(command, path):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from paths(sub, [*path, name])

runner = CliRunner()
failed, seen = [], []
for path in paths(get_command(ssmgraph.cli.app), []):
    result = runner.invoke(ssmgraph.cli.app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    seen.append(" ".join(path))
    if result.exit_code != 0 or "Usage" not in result.output:
        failed.append([path, result.exit_code, result.output[-500:]])
heavy = sorted(m for m in ("torch", "scipy") if m in sys.modules)
print(json.dumps({"seen": seen, "failed": failed, "heavy": heavy}))
"""

PUBLIC_API = """
import json, sys
import ssmgraph
from ssmgraph import build, create_model, hookimpl, load, load_blueprint, save  # noqa: F401
names = {name: type(getattr(ssmgraph, name)).__name__ for name in ssmgraph.__all__}
print(json.dumps({
    "names": names,
    "missing_from_dir": sorted(set(ssmgraph.__all__) - set(dir(ssmgraph))),
    "version": ssmgraph.__version__,
    "build": ssmgraph.build.__module__,
    "submodule": ssmgraph.serialization.__name__,
}))
"""


def run_fresh(script: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_of_every_command_leaves_torch_out() -> None:
    report = run_fresh(HELP_EVERYWHERE)
    assert not report["failed"], report["failed"]
    for path in ("", "build", "train", "merge", "compare", "check", "blocks", "import hf", "export hf", "plugin new"):
        assert path in report["seen"], f"`ssmgraph {path} --help` was not tried: {report['seen']}"
    assert report["heavy"] == [], f"`--help` imported {report['heavy']}: import them inside the commands (cli/*.py)"


def test_public_api_resolves_on_first_use() -> None:
    report = run_fresh(PUBLIC_API)
    assert set(report["names"]) == set(ssmgraph.__all__)
    assert report["names"]["build"] == "function" and report["names"]["CompiledModel"] == "type"
    assert report["missing_from_dir"] == []
    assert report["version"] == ssmgraph.__version__
    assert report["build"] == "ssmgraph" and report["submodule"] == "ssmgraph.serialization"
