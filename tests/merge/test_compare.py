"""``ssmgraph compare``: CKA between the layers of two saved models, views of a multi-model
blueprint included (their other views' layers are not in their weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.merge.compare import compare_models
from ssmgraph.merge.compatibility import classify
from ssmgraph.merge.models import LoadedModel, blueprint_of
from ssmgraph.merge.recipe import ModelSource
from ssmgraph.train.fitting import make_task

PAIR = {"d_model": 8, "vocab": 4, "heads": 2, "d_common": 4, "max_len": 64}


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views")
    torch.manual_seed(0)
    for view in ("transformer", "lstm"):
        ssmgraph.save(ssmgraph.build("pair", model=view, **PAIR), root / view)
    torch.manual_seed(1)
    ssmgraph.save(ssmgraph.build("gpt", d_model=8, layers=2, heads=2, vocab=4, max_len=64), root / "gpt")
    return root


@pytest.mark.parametrize("name", ["transformer", "gpt"])
def test_a_model_compared_with_itself_has_cka_one_on_the_diagonal(views: Path, tmp_path: Path, name: str) -> None:
    task = make_task("parity", {"seq_len": 16})
    result = compare_models(views / name, views / name, task, tmp_path, batches=1, batch_size=8)
    cka = torch.tensor(result["cka"])
    assert cka.shape == (2, 2) and torch.allclose(cka.diagonal(), torch.ones(2), atol=1e-9)
    assert json.loads((tmp_path / "cka.json").read_text())["cka"] == result["cka"] and (tmp_path / "cka.png").stat().st_size > 0


def test_a_view_is_its_own_blueprint(views: Path) -> None:
    transformer = ssmgraph.load(views / "transformer")
    data = blueprint_of(transformer)
    assert "lstm" not in data["nodes"] and list(data["outputs"]) == ["transformer.logits"] and "models" not in data
    loaded = [LoadedModel(v, ModelSource(v, checkpoint=views / v), ssmgraph.load(views / v)) for v in ("transformer", "lstm")]
    assert classify(loaded)[0] == "heterogeneous"


def test_a_task_the_models_cannot_read_is_a_clear_error(views: Path, tmp_path: Path) -> None:
    from ssmgraph.train import TrainingError

    with pytest.raises(TrainingError, match="feeds float features"):
        compare_models(views / "gpt", views / "gpt", make_task("digits", {}), tmp_path)


def test_an_output_path_that_is_a_file_is_a_clear_error(views: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(ssmgraph.SsmgraphError, match=r"is \(or lies under\) a file"):
            compare_models(views / "gpt", views / "gpt", make_task("parity", {"seq_len": 16}), out)
    assert (tmp_path / "taken").read_text() == "mine"


def test_folders_named_like_model_members_still_compare(views: Path, tmp_path: Path) -> None:
    import shutil

    for name in ("step", "train"):  # a CompiledModel member, an nn.Module member
        shutil.copytree(views / "gpt", tmp_path / name)
    result = compare_models(
        tmp_path / "step", tmp_path / "train", make_task("parity", {"seq_len": 16}), tmp_path / "out", batches=1, batch_size=8
    )
    assert result["layers_a"][0].startswith("step.") and result["layers_b"][0].startswith("model.")


def test_a_view_that_shares_another_views_module_rebuilds_with_the_same_weights() -> None:
    from ssmgraph.blueprint import load_blueprint
    from ssmgraph.blueprint.yamlsafe import dump_yaml
    from ssmgraph.graph.compile import compile_blueprint

    text = """
ssmgraph: 1
inputs: {x: {dtype: float32, shape: [batch, seq, 8]}}
nodes:
  a_mix: {block: ffn.mlp, in: x}
  a_out: {block: struct.linear, in: a_mix, args: {dim: 8}}
  b_mix: {block: norm.layer, in: x}
  b_out: {share: a_out, in: b_mix}
outputs: {a.y: a_out, b.y: b_out}
models: {a: {outputs: [a.y], taps: []}, b: {outputs: [b.y], taps: []}}
"""
    view = compile_blueprint(load_blueprint("two.yaml", text=text), model="b")
    rebuilt = compile_blueprint(load_blueprint("b.yaml", text=dump_yaml(blueprint_of(view))))
    assert list(rebuilt.state_dict()) == list(view.state_dict())  # the owner a_out is kept, a_mix pruned again
