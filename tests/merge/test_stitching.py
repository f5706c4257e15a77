"""Stitching: the surgery is exact, the fitted maps are their methods', the report is complete."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import ssmgraph
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.recipe import ModelSource, recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.merge.stitch import build_stitched, fit_conditioned, layer_pairs, stitched_blueprint

SHAPES = {"d_model": 12, "layers": 3}


def loaded(name: str, blueprint: str = "classifier", seed: int = 0, **overrides) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(name, ModelSource(name, blueprint=blueprint), ssmgraph.build(blueprint, **{**SHAPES, **overrides}).eval())


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_stitching_a_model_into_itself_with_the_identity_is_the_model(layer):
    a = loaded("a", mixer="mix.attention")
    model = build_stitched(a, a, layer, layer, torch.eye(12), torch.zeros(12))
    x = torch.randn(3, 20, 1)
    torch.testing.assert_close(model(x), a.model(x), rtol=1e-6, atol=1e-6)


def test_cross_architecture_stitch_runs_a_then_the_map_then_b():
    a, b = loaded("tf", mixer="mix.attention"), loaded("mamba", mixer="mix.mamba", seed=1)
    weight, bias = torch.randn(12, 12) / 4, torch.randn(12)
    model = build_stitched(a, b, 0, 1, weight, bias)
    x = torch.randn(2, 16, 1)
    _, taps = a.model(x, taps=["hidden"])
    replaced = taps["hidden.0"] @ weight.T + bias
    handle = b.model.get_submodule("blocks.1.out").register_forward_hook(lambda mod, inp, out: replaced)
    try:
        expected = b.model(x)
    finally:
        handle.remove()
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    names = set(stitched_blueprint(a, b, 0, 1)["nodes"])
    assert {"a_embed", "a_blocks", "stitch", "b_blocks", "b_norm_f", "b_head"} == names


def test_stitching_after_the_last_layer_feeds_the_head_directly():
    a, b = loaded("a", mixer="mix.attention"), loaded("b", mixer="mix.lstm", seed=2)
    model = build_stitched(a, b, 2, 2, torch.eye(12), torch.zeros(12))
    assert "b_blocks" not in stitched_blueprint(a, b, 2, 2)["nodes"]
    assert model(torch.randn(2, 8, 1)).shape == (2, 10)


def test_layer_pairs():
    assert layer_pairs(2, 3, "all") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert layer_pairs(2, 4, "matched") == [(0, 1), (1, 3)]


@pytest.mark.parametrize("estimator", ["lstsq", "procrustes", "cca", "ot"])
def test_per_class_maps_skip_classes_seen_once(estimator):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(41, 4, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(4, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0] * 20 + [1] * 20 + [2])  # class 2 has one row: no covariance to fit
    weight, bias = fit_conditioned(estimator, "per_class", X, Y, labels, 1e-4, 0)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    with pytest.raises(MergeError, match="no class is seen twice"):
        fit_conditioned(estimator, "per_class", X[:3], Y[:3], torch.tensor([0, 1, 2]), 1e-4, 0)


def test_a_model_without_a_layer_stack_is_refused():
    lstm = LoadedModel("lstm", ModelSource("lstm", blueprint="lstm"), ssmgraph.build("lstm", d_model=8))
    with pytest.raises(MergeError, match="one layer stack"):
        stitched_blueprint(lstm, lstm, 0, 0)


@pytest.mark.parametrize("estimator", ["lstsq", pytest.param("ot", marks=pytest.mark.slow)])
def test_a_stitch_merge_writes_a_loadable_model_and_a_full_report(tmp_path, estimator):
    for name, mixer, seed in (("tf", "mix.attention", 0), ("mamba", "mix.mamba", 1)):
        torch.manual_seed(seed)
        ssmgraph.save(ssmgraph.build("classifier", mixer=mixer, d_model=8, layers=2), tmp_path / name)
    recipe = recipe_from_text(
        textwrap.dedent(f"""
        merge_method: stitch
        models: [{{name: tf, checkpoint: tf}}, {{name: mamba, checkpoint: mamba}}]
        parameters: {{estimator: {estimator}, pairs: all, probe_batches: 2, finetune_steps: 3, condition: {"per_class" if estimator == "lstsq" else "pooled"}}}
        data: {{task: digits, batch_size: 16, eval_batches: 2}}
    """),
        "stitch.yaml",
        tmp_path,
    )
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())["metrics"]
    assert len(report["pairs"]) == 4 and all(-1e9 < v["r2"] <= 1 for v in report["pairs"].values())
    assert {"random orthogonal map", "shuffled token pairing"} <= set(report["controls"]) and "finetuned" in report["best"]
    assert report["selected_by"] == "accuracy" and report["parameters"]["trained"] == 8 * 8 + 8
    stitched = ssmgraph.load(out)
    assert stitched(torch.randn(2, 64, 1)).shape == (2, 10)
    assert (out / "stitch_accuracy.png").exists()
