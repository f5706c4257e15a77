"""Superposition: the surgery is exact, the merged model is causal, a run reports what it should."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.merge.builtin import SUPERPOSE_PARAMS
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.recipe import ModelSource, recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.merge.superpose.model import build_superposed

SHAPES = {"d_model": 16, "layers": 2, "heads": 2, "vocab": 256, "max_len": 64}
DEFAULTS = {p.name: p.default for p in SUPERPOSE_PARAMS}


def loaded(name: str, seed: int, blueprint: str = "gpt", **shapes) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(name, ModelSource(name, blueprint=blueprint), ssmgraph.build(blueprint, **(shapes or SHAPES)).eval())


def _set_alpha(model, value: float) -> None:
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("blend"):
                module.alpha.fill_(value)
            if name.endswith(".ae"):
                module.decoder.weight.zero_()


@pytest.mark.parametrize("alpha,which", [(0.0, 0), (1.0, 1)])
def test_with_alpha_at_an_end_and_identity_autoencoders_it_is_that_model(alpha, which):
    a, b = loaded("en", 0), loaded("fr", 1)
    model = build_superposed(a, b, DEFAULTS).eval()
    _set_alpha(model, alpha)
    tokens = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(model(tokens), (a, b)[which].model(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autoencoder", ["linear", "causal_conv"])
def test_the_superposed_model_never_reads_a_later_token(autoencoder):
    a, b = loaded("en", 0), loaded("fr", 1)
    model = build_superposed(a, b, {**DEFAULTS, "autoencoder": autoencoder, "alpha": "vector"}).eval()
    tokens = torch.randint(0, 256, (2, 16))
    logits = model(tokens)
    for t in (0, 7, 14):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, 256, changed[:, t + 1 :].shape)
        assert torch.equal(model(changed)[:, : t + 1], logits[:, : t + 1])


def test_models_of_different_depth_are_refused():
    with pytest.raises(MergeError, match="pairs layers one to one"):
        build_superposed(loaded("en", 0), loaded("fr", 1, **{**SHAPES, "layers": 3}), DEFAULTS)


@pytest.mark.parametrize("narrow", ["a", "b"])
def test_models_of_different_architectures_and_widths_superpose_exactly_and_causally(narrow):
    """A gpt and a mamba_model of another width: at α = 0 or 1 with identity autoencoders the
    superposed model is that model (the narrower one reads and writes its own coordinates of the
    wider state), and no position reads a later token."""
    gpt = loaded("en", 0)
    mamba = loaded("fr", 1, "mamba_model", d_model=8 if narrow == "b" else 24, layers=2, vocab=256)
    model = build_superposed(gpt, mamba, {**DEFAULTS, "alpha": "vector", "autoencoder": "causal_conv"}).eval()
    assert model.nodes["embed_blend"].out_type.dim == (16 if narrow == "b" else 24)
    tokens = torch.randint(0, 256, (2, 12))
    logits = model(tokens)
    for t in (0, 5, 10):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, 256, changed[:, t + 1 :].shape)
        assert torch.equal(model(changed)[:, : t + 1], logits[:, : t + 1])
    for alpha, source in ((0.0, gpt), (1.0, mamba)):
        _set_alpha(model, alpha)
        torch.testing.assert_close(model(tokens), source.model(tokens), rtol=1e-5, atol=1e-5)


def test_the_layer_stacks_may_have_different_names(tmp_path: Path):
    shipped = builtin_blueprints()["mamba"]
    shutil.copytree(shipped.parent / "fragments", tmp_path / "fragments")
    text = shipped.read_text().replace("name: mamba", "name: mamba_renamed").replace("blocks", "stack")
    (tmp_path / "renamed.yaml").write_text(text)
    shapes = {"d_model": 16, "layers": 2}
    a = loaded("en", 0, "mamba", **shapes)
    b = loaded("fr", 1, str(tmp_path / "renamed.yaml"), **shapes)
    model = build_superposed(a, b, DEFAULTS).eval()
    _set_alpha(model, 1.0)
    tokens = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(model(tokens), b.model(tokens), rtol=1e-5, atol=1e-5)


def test_models_of_different_architectures_merge_without_the_weight_baselines(tmp_path: Path):
    torch.manual_seed(1)
    ssmgraph.save(ssmgraph.build("gpt", **SHAPES), tmp_path / "en")
    torch.manual_seed(2)
    ssmgraph.save(ssmgraph.build("mamba", d_model=8, layers=2, vocab=256), tmp_path / "fr")  # and narrower
    recipe = recipe_from_text(
        textwrap.dedent("""
        merge_method: superpose
        models: [{name: en, checkpoint: en}, {name: fr, checkpoint: fr}]
        parameters: {options_a: {corpus: en}, options_b: {corpus: fr}, steps: 2}
        data: {task: bytes, options: {seq_len: 16}, batch_size: 4, eval_batches: 1}
    """),
        "superpose.yaml",
        tmp_path,
    )
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    assert {"specialist en", "specialist fr", "superposed"} <= set(report["metrics"])
    assert "linear interpolation" not in report["metrics"]
    assert any("cannot be averaged" in note for note in report["notes"])
    assert ssmgraph.load(out)(torch.randint(0, 256, (1, 10))).shape == (1, 10, 256)


def test_a_superpose_merge_trains_alpha_and_reports_every_figure(tmp_path):
    torch.manual_seed(0)
    base = ssmgraph.build("gpt", **SHAPES)
    ssmgraph.save(base, tmp_path / "base")
    for name, seed in (("en", 1), ("fr", 2)):
        torch.manual_seed(seed)
        ssmgraph.save(ssmgraph.build("gpt", **SHAPES), tmp_path / name)
    recipe = recipe_from_text(
        textwrap.dedent("""
        merge_method: superpose
        models: [{name: en, checkpoint: en}, {name: fr, checkpoint: fr}]
        parameters: {options_a: {corpus: en}, options_b: {corpus: fr}, alpha: vector, steps: 4, base: base}
        data: {task: bytes, options: {seq_len: 16}, batch_size: 8, eval_batches: 2}
    """),
        "superpose.yaml",
        tmp_path,
    )
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["sequences"] == {"a": 16, "b": 16}
    assert {"specialist en", "specialist fr", "superposed", "linear interpolation", "task arithmetic"} <= set(metrics)
    assert len(metrics["alpha"]) == 4 and len(metrics["reconstruction_nmse"]) == 2 and len(metrics["polysemantic"]) == 2
    assert all(0.0 <= a <= 1.0 for a in metrics["alpha"])
    for png in ("training.png", "alpha.png", "trajectories.png", "tsne.png"):
        assert (out / png).stat().st_size > 0
    merged = ssmgraph.load(out)
    assert merged(torch.randint(0, 256, (1, 10))).shape == (1, 10, 256)
