"""Paths in a recipe's task options start from the recipe's folder, like its checkpoints."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import torch

import ssmgraph
from ssmgraph.merge.recipe import load_recipe
from ssmgraph.merge.superpose.training import language_tasks
from ssmgraph.train.fitting import make_task


def test_task_paths_resolve_from_the_recipe_folder(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "project"
    (folder / "texts").mkdir(parents=True)
    (folder / "texts" / "en.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    (folder / "texts" / "fr.txt").write_text("portez ce vieux whisky au juge blond qui fume. " * 20)
    ssmgraph.save(ssmgraph.build("gpt", d_model=8, layers=1, heads=2, max_len=16), folder / "a")
    (folder / "merge.yaml").write_text(
        textwrap.dedent(
            """
            merge_method: linear
            models: [{name: a, checkpoint: a}, {name: b, checkpoint: a}]
            data: {task: bytes, options: {path: texts/en.txt, seq_len: 8}}
            """
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory holds no texts/
    recipe = load_recipe(tmp_path / "project" / "merge.yaml")
    assert recipe.data.options["path"] == str((folder / "texts" / "en.txt").absolute())
    assert recipe.data.options["seq_len"] == 8  # other options stay as written
    batch = make_task("bytes", recipe.data.options).sample(2, torch.Generator().manual_seed(0), "train")
    assert bytes(batch.inputs[0].tolist()).decode() in "the quick brown fox jumps over the lazy dog. " * 3
    # superpose's per-model options too
    context = SimpleNamespace(recipe=recipe, params={"options_a": {}, "options_b": {"path": "texts/fr.txt"}})
    en, fr = language_tasks(context)
    assert (
        bytes(fr.sample(1, torch.Generator().manual_seed(0), "train").inputs[0].tolist()).decode()
        in "portez ce vieux whisky au juge blond qui fume. " * 3
    )
    assert (
        bytes(en.sample(1, torch.Generator().manual_seed(0), "train").inputs[0].tolist()).decode()
        in "the quick brown fox jumps over the lazy dog. " * 3
    )


def test_a_home_relative_task_path_in_a_recipe_resolves_to_the_home_folder(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / "texts").mkdir(parents=True)
    (home / "texts" / "en.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    monkeypatch.setenv("HOME", str(home))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "merge.yaml").write_text(
        textwrap.dedent(
            """
            merge_method: linear
            models: [{name: a, blueprint: gpt}, {name: b, blueprint: gpt}]
            data: {task: bytes, options: {path: ~/texts/en.txt, seq_len: 8}}
            """
        )
    )
    recipe = load_recipe(folder / "merge.yaml")
    assert recipe.data.options["path"] == str(home / "texts" / "en.txt")  # not <recipe folder>/~/texts/en.txt
    context = SimpleNamespace(recipe=recipe, params={"options_a": {"path": "~/texts/en.txt"}, "options_b": {}})
    en, _ = language_tasks(context)
    assert (
        bytes(en.sample(1, torch.Generator().manual_seed(0), "train").inputs[0].tolist()).decode()
        in "the quick brown fox jumps over the lazy dog. " * 3
    )
