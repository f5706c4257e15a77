"""Merge methods come from a hook; a method that cannot apply says why and what can."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.merge.context import MergeError, MergeResult
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.plugins import PluginError, Registry, reset_registry
from ssmgraph.registry.specs import MergeMethodSpec, Param


def _first(context):
    return MergeResult(
        copy.deepcopy(context.models[0].model), metrics={"picked": context.models[0].name, "note": context.params["note"]}
    )


PICK = MergeMethodSpec(
    name="pick_first",
    doc="Keep the first model.",
    params=(Param("note", str, "", "a note for the report"),),
    run=_first,
    needs="heterogeneous",
)


class Plugin:
    @hookimpl
    def ssmgraph_merge_methods(self):
        return [PICK]


@pytest.fixture
def with_plugin():
    registry = Registry(autoload=False)
    registry.register(Plugin(), "picker", "ssmgraph-picker", "1.0")
    registry.collect()
    reset_registry(registry)
    yield registry
    reset_registry(None)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32), root / "gpt")
    ssmgraph.save(ssmgraph.build("mamba_model", d_model=16, layers=1, vocab=11), root / "mamba")
    return root


def recipe(text, base):
    return recipe_from_text(textwrap.dedent(text), "merge.yaml", base)


def test_builtin_methods_are_registered_like_a_plugins():
    registry = Registry(autoload=False)
    assert {"linear", "task_arithmetic", "ties", "dare", "slerp", "mutual"} <= set(registry.merge_methods)
    assert registry.merge_method("ties").plugin == "ssmgraph"
    assert "ssmgraph.merge.builtin" in registry.plugins and registry.plugins["ssmgraph.merge.builtin"].merge_methods


def test_a_plugin_method_runs_from_a_recipe(with_plugin, saved, tmp_path):
    assert with_plugin.merge_method("pick_first").plugin == "ssmgraph-picker"
    r = recipe(
        "merge_method: pick_first\nmodels: [{name: g, checkpoint: gpt}, {name: m, checkpoint: mamba}]\nparameters: {note: hi}\n",
        saved,
    )
    out, _ = run_merge(r, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == {"picked": "g", "note": "hi"} and report["plugin"] == "ssmgraph-picker"
    tokens = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(ssmgraph.load(out)(tokens), ssmgraph.load(saved / "gpt")(tokens))


def test_a_weight_method_on_different_architectures_says_what_applies(saved, tmp_path):
    r = recipe("merge_method: ties\nmodels: [{name: g, checkpoint: gpt}, {name: m, checkpoint: mamba}]\n", saved)
    with pytest.raises(
        MergeError,
        match=r"needs same-shape models, but these are heterogeneous: .*mix.attention.*mix.mamba.*Methods that apply: distill, mutual",
    ) as info:
        run_merge(r, tmp_path / "out", progress=False)
    assert info.value.code == "E700"
    assert not (tmp_path / "out").exists()


def test_a_tied_and_an_untied_model_are_not_averaged_tensor_by_tensor(saved, tmp_path):
    from ssmgraph.blueprint import builtin_blueprints

    untied = builtin_blueprints()["gpt"].read_text().replace(", tie: {weight: embed.weight}", "")
    (tmp_path / "untied.yaml").write_text(untied)
    ssmgraph.save(
        ssmgraph.build(str(tmp_path / "untied.yaml"), d_model=16, layers=1, heads=2, vocab=11, max_len=32), tmp_path / "untied"
    )
    r = recipe(
        f"merge_method: linear\nmodels: [{{name: a, checkpoint: {saved / 'gpt'}}}, {{name: b, checkpoint: {tmp_path / 'untied'}}}]\n",
        saved,
    )
    with pytest.raises(
        MergeError,
        match=r"heterogeneous: models 'a' and 'b' tie different weights \('a' ties head.weight to embed.weight; 'b' ties nothing\)",
    ):
        run_merge(r, tmp_path / "out", progress=False)


def test_the_written_recipe_runs_again_from_another_folder(saved, tmp_path):
    out, _ = run_merge(
        recipe("merge_method: linear\nmodels: [{name: a, checkpoint: gpt}, {name: b, checkpoint: gpt}]\n", saved),
        tmp_path / "out",
        progress=False,
    )
    written = (out / "merge.yaml").read_text()
    again, _ = run_merge(recipe(written, tmp_path / "elsewhere"), tmp_path / "again", progress=False)
    tokens = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(ssmgraph.load(again)(tokens), ssmgraph.load(out)(tokens))


def test_a_written_recipe_with_a_blueprint_file_runs_again_from_another_folder(tmp_path, monkeypatch):
    from ssmgraph.blueprint import builtin_blueprints

    monkeypatch.chdir(tmp_path)  # the recipe is given by a relative path, as on a command line
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "tiny.yaml").write_text(builtin_blueprints()["gpt"].read_text())
    tiny = "blueprint: tiny.yaml, set: {d_model: 8, layers: 1, heads: 2, vocab: 11}"
    source = f"merge_method: linear\nmodels: [{{name: a, {tiny}}}, {{name: b, {tiny}}}]\n"
    out, _ = run_merge(recipe(source, Path("rec")), tmp_path / "out", progress=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again, _ = run_merge(recipe((out / "merge.yaml").read_text(), Path(".")), tmp_path / "again", progress=False)
    tokens = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(ssmgraph.load(again)(tokens), ssmgraph.load(out)(tokens))


def test_an_existing_output_is_not_replaced_without_overwrite(saved, tmp_path):
    (tmp_path / "out").mkdir()
    r = recipe("merge_method: linear\nmodels: [{name: a, checkpoint: gpt}, {name: b, checkpoint: gpt}]\n", saved)
    with pytest.raises(ssmgraph.SsmgraphError, match="already exists; pass --overwrite"):
        run_merge(r, tmp_path / "out", progress=False)


def test_linear_weights_that_sum_to_zero_are_a_merge_error_not_a_traceback(saved, tmp_path):
    r = recipe(
        "merge_method: linear\nmodels: [{name: a, checkpoint: gpt, parameters: {weight: 1}}, {name: b, checkpoint: gpt, parameters: {weight: -1}}]\n",
        saved,
    )
    with pytest.raises(MergeError, match=r"merge.yaml: the models' weights \(a: 1, b: -1\) sum to 0.*normalize: false") as info:
        run_merge(r, tmp_path / "out", progress=False)
    assert info.value.code == "E700" and not (tmp_path / "out").exists()


def test_overwrite_replaces_an_earlier_merge_only(saved, tmp_path):
    r = recipe("merge_method: linear\nmodels: [{name: a, checkpoint: gpt}, {name: b, checkpoint: gpt}]\n", saved)
    run_merge(r, tmp_path / "out", progress=False)
    run_merge(r, tmp_path / "out", overwrite=True, progress=False)  # an earlier merge: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for overwrite in (False, True):  # never the advice to pass --overwrite where it would not help
        with pytest.raises(ssmgraph.SsmgraphError, match="holds other files"):
            run_merge(r, tmp_path / "mine", overwrite=overwrite, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(MergeError, match="holds model 'a', which the merge reads"):
        run_merge(r, saved / "gpt", overwrite=True, progress=False)
    assert ssmgraph.load(saved / "gpt") is not None


def test_a_failing_method_leaves_nothing_half_written(with_plugin, saved, tmp_path):
    def explode(context):
        (context.out_dir / "partial.png").write_text("x")
        raise RuntimeError("boom")

    broken = MergeMethodSpec(name="explode", doc="Fails.", params=(), run=explode, needs="heterogeneous")
    with_plugin.merge_methods["explode"] = broken
    r = recipe("merge_method: explode\nmodels: [{name: a, checkpoint: gpt}, {name: b, checkpoint: gpt}]\n", saved)
    with pytest.raises(RuntimeError, match="boom"):
        run_merge(r, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_duplicate_and_malformed_methods_are_plugin_problems():
    class Dup:
        @hookimpl
        def ssmgraph_merge_methods(self):
            return [MergeMethodSpec(name="linear", doc="Another linear.", params=(), run=_first)]

    class Bad:
        @hookimpl
        def ssmgraph_merge_methods(self):
            return [MergeMethodSpec(name="Bad-Name", doc="", params=(), run=_first, needs="whatever")]

    registry = Registry(autoload=False)
    registry.register(Bad(), "bad", "ssmgraph-bad", "0.1")
    registry.collect()
    assert any("merge method 'Bad-Name' is malformed" in p and "needs 'whatever'" in p for p in registry.problems)
    registry.register(Dup(), "dup", "ssmgraph-dup", "0.2")
    registry.collect()  # a clash is reported, and only a use of the name is refused
    with pytest.raises(PluginError, match=r"merge method 'linear' is provided twice.*ssmgraph-dup 0.2"):
        registry.merge_method("linear")


def test_report_json_is_strict_json_even_with_nan_metrics(tmp_path):
    from ssmgraph.merge.report import write_report

    summary = {
        "method": "m",
        "plugin": "p",
        "models": {"a": "x"},
        "compatibility": "identical",
        "compatibility_reason": "r",
        "parameters": {},
        "seconds": 0.1,
    }
    write_report(tmp_path, summary, MergeResult(torch.nn.Linear(1, 1), metrics={"r2": float("nan"), "grid": [1.0, float("inf")]}))

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert report["metrics"] == {"r2": None, "grid": [1.0, None]}
