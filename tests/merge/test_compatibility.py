"""Compatibility classes: one enum, spelled ``same_shape`` in specs and report.json and
``same-shape`` to users, in the registry's order; ``merge --dry-run`` and ``--methods`` show them."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.merge.compatibility import Compatibility
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import MergePlan, plan
from ssmgraph.registry.specs import COMPATIBILITY


def test_the_classes_are_the_registrys_in_its_order() -> None:
    assert [c.value for c in Compatibility] == list(COMPATIBILITY)
    assert Compatibility("same_shape") is Compatibility.SAME_SHAPE and Compatibility.SAME_SHAPE == "same_shape"


def test_users_read_hyphens_and_formatting_gives_the_value() -> None:
    assert [c.label for c in Compatibility] == ["identical", "same-shape", "alignable", "heterogeneous"]
    assert f"{Compatibility.SAME_SHAPE}" == str(Compatibility.SAME_SHAPE) == "same_shape"


def test_within_orders_the_classes_from_most_to_least_alike() -> None:
    assert Compatibility.IDENTICAL.within("same_shape") and Compatibility.SAME_SHAPE.within(Compatibility.SAME_SHAPE)
    assert not Compatibility.ALIGNABLE.within("same_shape") and Compatibility.ALIGNABLE.within("heterogeneous")


def test_plan_returns_the_models_their_class_and_the_task(tmp_path) -> None:
    text = (
        "merge_method: linear\n"
        "models: [{name: a, blueprint: gpt, set: {d_model: 8, layers: 1, heads: 2, vocab: 11}}, "
        "{name: b, blueprint: gpt, set: {d_model: 8, layers: 1, heads: 2, vocab: 11}}]\n"
    )
    checked = plan(recipe_from_text(text, "merge.yaml", tmp_path))
    assert isinstance(checked, MergePlan) and [m.name for m in checked.models] == ["a", "b"]
    assert (
        checked.compatibility is Compatibility.IDENTICAL
        and checked.reason == "all models share one blueprint"
        and checked.task is None
    )


def test_the_cli_shows_hyphenated_classes(tmp_path) -> None:
    torch.manual_seed(0)
    ssmgraph.save(ssmgraph.build("gpt", d_model=8, layers=1, heads=2, vocab=11), tmp_path / "a")
    torch.manual_seed(1)
    ssmgraph.save(ssmgraph.build("llama", d_model=8, layers=1, heads=2, vocab=11), tmp_path / "b")
    (tmp_path / "merge.yaml").write_text(
        "merge_method: mutual\nmodels: [{name: a, checkpoint: a}, {name: b, checkpoint: b}]\ndata: {task: copying}\n"
    )
    dry = CliRunner().invoke(app, ["merge", str(tmp_path / "merge.yaml"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "2 models, heterogeneous:" in dry.output and "mutual applies" in dry.output
    methods = CliRunner().invoke(app, ["merge", "--methods"])
    assert methods.exit_code == 0 and "same-shape" in methods.output and "same_shape" not in methods.output
