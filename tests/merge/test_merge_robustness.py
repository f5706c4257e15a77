"""Merges refuse what would only fail late or write garbage: inf/NaN results (E701), inf/NaN numbers
in the recipe, names that cannot be folder names, and unknown tasks or task options in `data:`."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.errors import BlueprintError
from ssmgraph.merge import run as merge_run
from ssmgraph.merge.context import MergeError, NonFiniteMergeError
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge

SPOILED = "norm_f.bias"
"""The tensor the broken model holds NaN in (not the first one: the error must name it)."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32), root / "m0")
    broken = ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32)
    with torch.no_grad():
        dict(broken.named_parameters())[SPOILED].fill_(math.nan)
    ssmgraph.save(broken, root / "nan")
    return root


def cli_merge(recipe_text: str, folder, out):
    (folder / "merge.yaml").write_text(textwrap.dedent(recipe_text), encoding="utf-8")
    return CliRunner().invoke(app, ["merge", str(folder / "merge.yaml"), "--out", str(out)])


def parse_error(text: str, base) -> BlueprintError:
    with pytest.raises(BlueprintError) as info:
        recipe_from_text(textwrap.dedent(text), "merge.yaml", base)
    return info.value


# ---- E701: a merge of inf/NaN is refused, nothing written ---------------------------------------------------


def test_a_linear_merge_that_overflows_exits_2_and_writes_nothing(saved, tmp_path):
    result = cli_merge(
        f"""
        merge_method: linear
        models:
          - {{name: a, checkpoint: '{saved / "m0"}', parameters: {{weight: 1e308}}}}
          - {{name: b, checkpoint: '{saved / "m0"}', parameters: {{weight: 1e308}}}}
        """,
        tmp_path,
        tmp_path / "out",
    )
    first_key = next(iter(ssmgraph.load(saved / "m0").state_dict()))
    assert result.exit_code == 2, result.output
    assert "error[E701]" in result.output and f"tensor {first_key!r}" in result.output and "'linear'" in result.output
    assert "smaller model weights (a: 1e+308, b: 1e+308)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_source_model_holding_nan_is_named(saved, tmp_path):
    recipe = recipe_from_text(
        "merge_method: task_arithmetic\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: nan}]\n", "merge.yaml", saved
    )
    with pytest.raises(
        NonFiniteMergeError, match=rf"merge.yaml: merge method 'task_arithmetic' produced inf or NaN values in tensor '{SPOILED}'"
    ) as info:
        run_merge(recipe, tmp_path / "out", progress=False)
    assert (
        isinstance(info.value, MergeError)
        and info.value.code == "E701"
        and "source model(s) 'b' already hold inf or NaN" in str(info.value)
    )
    assert not (tmp_path / "out").exists()


# ---- non-finite numbers in the recipe are located up front --------------------------------------------------

HEAD = "merge_method: {method}\nmodels:\n  - {{name: a, checkpoint: m0}}\n"


def at(text: str, line: int, token: str) -> tuple[int, int]:
    """The (line, column) of ``token`` on ``line`` of ``text``: what a located error points at."""
    return line, text.splitlines()[line - 1].index(token) + 1


@pytest.mark.parametrize(
    "method,tail,line,token,path",
    [
        ("linear", "  - {name: b, checkpoint: m0, parameters: {weight: .inf}}\n", 4, ".inf", "models[1].parameters.weight"),
        ("slerp", "  - {name: b, checkpoint: m0}\nparameters: {t: .nan}\n", 5, ".nan", "parameters.t"),
        (
            "linear",
            "  - {name: b, checkpoint: m0}\ndata: {task: copying, options: {seq_len: 1e999}}\n",
            5,
            "1e999",
            "data.options.seq_len",
        ),
        ("linear", "  - {name: b, blueprint: gpt, set: {d_model: -.inf}}\n", 4, "-.inf", "models[1].set.d_model"),
    ],
)
def test_non_finite_numbers_in_a_recipe_are_located(saved, method, tail, line, token, path):
    text = HEAD.format(method=method) + tail
    exc = parse_error(text, saved)
    assert exc.codes == ["E112"], exc  # the code Param.check gives non-finite values
    found = exc.diagnostics[0]
    assert (
        (found.mark.line, found.mark.col) == at(text, line, token)
        and found.path == path
        and "is not a finite number" in found.message
    ), exc


# ---- model names that cannot be folder names ------------------------------------------------------------------


def test_a_300_character_name_fails_at_once_before_anything_loads_or_trains(tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("the merge started: the name was not checked when the recipe was read")

    monkeypatch.setattr(merge_run, "plan", never)
    name = "m" * 300
    result = cli_merge(
        f"""
        merge_method: mutual
        models:
          - {{name: {name}, blueprint: classifier, set: {{d_model: 8, layers: 1}}}}
          - {{name: b, blueprint: classifier, set: {{d_model: 8, layers: 1}}}}
        parameters: {{steps: 1}}
        data: {{task: digits, batch_size: 4, eval_batches: 1}}
        """,
        tmp_path,
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert f"merge.yaml:4:12: error[E200]: models[0].name: model name '{'m' * 24}'... is too long (300 bytes)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_name_of_100_characters_is_fine(saved):
    recipe = recipe_from_text(
        f"merge_method: linear\nmodels: [{{name: {'a' * 100}, checkpoint: m0}}, {{name: b, checkpoint: m0}}]\n",
        "merge.yaml",
        saved,
    )
    assert recipe.models[0].name == "a" * 100


@pytest.mark.parametrize(
    "first,second,words", [("ab", "AB", "'ab' and 'AB' differ only in case"), ("nul", "b", "'nul' is a device name on Windows")]
)
def test_names_that_are_no_folder_names_on_some_systems_are_refused(saved, first, second, words):
    exc = parse_error(
        f"merge_method: linear\nmodels: [{{name: {first}, checkpoint: m0}}, {{name: {second}, checkpoint: m0}}]\n", saved
    )
    assert exc.codes == ["E200"] and words in str(exc) and exc.diagnostics[0].mark.line == 2, exc


# ---- data: errors carry the recipe's file:line and key path -----------------------------------------------------

TWO = "merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m0}]\n"


@pytest.mark.parametrize(
    "data,code,token,path,words",
    [
        ("data: {task: copyng}\n", "E112", "copyng", "data.task", "did you mean 'copying'"),
        ("data: {task: copying, options: {seq_len: -3}}\n", "E112", "-3", "data.options.seq_len", "below the minimum 3"),
        ("data: {task: copying, options: {seqlen: 16}}\n", "E110", "seqlen", "data.options.seqlen", "did you mean 'seq_len'"),
    ],
)
def test_data_errors_are_located_with_the_recipe_key_path(saved, data, code, token, path, words):
    exc = parse_error(TWO + data, saved)
    assert exc.codes == [code], exc
    found = exc.diagnostics[0]
    assert (found.mark.line, found.mark.col) == at(TWO + data, 3, token) and found.path == path and words in str(exc), exc
    assert "task_options" not in str(exc)


def test_a_scalar_where_a_mapping_belongs_is_located(saved):
    exc = parse_error(TWO + "parameters: 5\n", saved)
    assert (
        exc.codes == ["E112"]
        and (exc.diagnostics[0].mark.line, exc.diagnostics[0].mark.col) == (3, 13)
        and "parameters must be a mapping" in str(exc)
    ), exc
