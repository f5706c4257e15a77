"""Merge recipes: every mistake is located (file:line:col) and explained."""

from __future__ import annotations

import textwrap

import pytest

import ssmgraph
from ssmgraph.errors import BlueprintError
from ssmgraph.merge.recipe import recipe_from_text


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=11, max_len=32), root / f"m{seed}")
    return root


def parse(text: str, base):
    return recipe_from_text(textwrap.dedent(text), "merge.yaml", base)


def error(text: str, base) -> BlueprintError:
    with pytest.raises(BlueprintError) as info:
        parse(text, base)
    return info.value


def test_a_good_recipe_resolves_with_defaults(saved):
    recipe = parse(
        """
        merge_method: ties
        models:
          - {name: a, checkpoint: m0}
          - {name: b, checkpoint: m1, parameters: {weight: 0.7}}
        base_model: a
        parameters: {density: 0.3}
        permute: {iters: 5}
        data: {task: copying, batch_size: 8}
        """,
        saved,
    )
    assert recipe.method.name == "ties" and recipe.parameters == {"density": 0.3, "majority": "sum", "scale": 1.0}
    assert recipe.model("b").parameters["weight"] == 0.7 and recipe.model("a").checkpoint == saved / "m0"
    assert recipe.permute == {"iters": 5, "seed": 0, "match": "weights", "probe_batches": 8} and recipe.data.eval_size == 8 * 16
    round_trip = recipe.to_dict()
    assert round_trip["merge_method"] == "ties" and round_trip["models"][1]["parameters"] == {"weight": 0.7}


@pytest.mark.parametrize(
    "text,code,where,words",
    [
        (
            "merge_method: tie\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\n",
            "E112",
            (1, 15),
            "did you mean 'ties'",
        ),
        ("models: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\n", "E111", (1, 1), "merge_method"),
        (
            "merge_method: ties\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\nparameters: {densty: 0.5}\n",
            "E110",
            (3, 14),
            "density",
        ),
        (
            "merge_method: ties\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\nparameters: {density: 2.0}\n",
            "E112",
            (3, 23),
            "above the maximum",
        ),
        (
            "merge_method: slerp\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}, {name: c, checkpoint: m1}]\n",
            "E112",
            (2, 9),
            "takes 2 models",
        ),
        (
            "merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: nowhere}]\n",
            "E210",
            (2, 59),
            "does not exist",
        ),
        (
            "merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\nbase_model: c\n",
            "E210",
            (3, 13),
            "not one of the models",
        ),
        (
            "merge_method: linear\nmodels: [{name: a, checkpoint: m0, blueprint: gpt}, {name: b, checkpoint: m1}]\n",
            "E111",
            (2, 10),
            "exactly one of",
        ),
        ("merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: a, checkpoint: m1}]\n", "E200", (2, 44), "used twice"),
        ("merge_method: mutual\nmodels: [{name: a, checkpoint: m0}]\n", "E111", (1, 1), "needs 'data'"),
        ("merge_method: linear\nmodel: []\n", "E110", (2, 1), "did you mean 'models'"),
        (
            "merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\ndata: {tsk: copying}\n",
            "E110",
            (3, 8),
            "task",
        ),
    ],
)
def test_mistakes_are_located(saved, text, code, where, words):
    exc = error(text, saved)
    found = [d for d in exc.diagnostics if d.code == code]
    assert found, exc
    assert (found[0].mark.line, found[0].mark.col) == where, exc
    assert words in str(exc)
