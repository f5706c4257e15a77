"""Stitching language models: LM figures in the report, pairs chosen by held-out loss, the tie
kept, the levers (at, learn, finetune) and the controls."""

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
from ssmgraph.merge.stitch import build_stitched, farthest_layer, next_norm, resolve_tie, stitched_blueprint
from ssmgraph.merge.stitch_report import columns, headline, rank_key
from ssmgraph.merge.stitch_search import finetune, trained_parameters
from ssmgraph.train.fitting import make_task

GPT = {"d_model": 8, "layers": 3, "heads": 2, "max_len": 16}


def lm(name: str, blueprint: str = "gpt", seed: int = 0, **shapes) -> LoadedModel:
    torch.manual_seed(seed)
    shapes = shapes or (GPT if blueprint == "gpt" else {"d_model": 8, "layers": 3})
    return LoadedModel(name, ModelSource(name, blueprint=blueprint), ssmgraph.build(blueprint, **shapes).eval())


def hooked(a: LoadedModel, b: LoadedModel, i: int, j: int, map_) -> torch.Tensor:
    """B's logits with its state after layer j replaced by ``map_`` of A's state after layer i."""
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    _, taps = a.model(x, taps=["resid"])
    replaced = map_(taps[f"resid.{i}"])
    handle = b.model.get_submodule(f"blocks.{j}.out").register_forward_hook(lambda mod, inp, out: replaced)
    try:
        return x, b.model(x)
    finally:
        handle.remove()


def test_a_shared_embedding_stays_tied_in_the_saved_stitched_model(tmp_path):
    a, b = lm("a"), lm("b", seed=1)
    with torch.no_grad():
        b.model.get_submodule("embed").weight.copy_(a.model.get_submodule("embed").weight)  # one embedding, as after mutual
    tie, info = resolve_tie(a, b, "auto")
    assert tie and info["embedding_difference"] == 0.0
    weight, bias = torch.randn(8, 8) / 3, torch.randn(8)
    model = build_stitched(a, b, 1, 0, weight, bias, tie=tie)
    assert stitched_blueprint(a, b, 1, 0, tie=True)["nodes"]["b_head"]["tie"] == {"weight": "a_embed.weight"}
    x, expected = hooked(a, b, 1, 0, lambda h: h @ weight.T + bias)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    ssmgraph.save(model, tmp_path / "stitched")
    loaded = ssmgraph.load(tmp_path / "stitched")
    assert loaded.tied == {"b_head.weight": "a_embed.weight"}
    assert loaded.get_submodule("b_head").weight is loaded.get_submodule("a_embed").weight
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_different_embeddings_are_untied_by_auto_and_tied_to_a_by_keep():
    a, b = lm("a"), lm("b", seed=1)
    tie, info = resolve_tie(a, b, "auto")
    assert not tie and info["embedding_difference"] > 0.1
    untied = build_stitched(a, b, 2, 1, torch.eye(8), torch.zeros(8), tie=tie)
    x, expected = hooked(a, b, 2, 1, lambda h: h)
    torch.testing.assert_close(untied(x), expected, rtol=1e-5, atol=1e-5)
    assert resolve_tie(a, b, "keep")[0] and not resolve_tie(a, b, "untie")[0]
    kept = build_stitched(a, b, 2, 1, torch.eye(8), torch.zeros(8), tie=True)
    assert kept.tied == {"b_head.weight": "a_embed.weight"}
    torch.testing.assert_close(kept.get_submodule("b_head").weight, a.model.get_submodule("embed").weight)
    wide = lm("wide", d_model=12, layers=2, heads=2, max_len=16)
    with pytest.raises(MergeError, match="tie: keep needs"):
        resolve_tie(a, wide, "keep")


def test_at_normed_reads_a_copy_of_a_next_norm():
    a, b = lm("a"), lm("b", blueprint="mamba_model", seed=1)
    assert next_norm(a, 0)[0] == "blocks.1.norm1" and next_norm(a, 2)[0] == "norm_f"
    with torch.no_grad():
        for name in ("blocks.1.norm1", "norm_f"):
            a.model.get_submodule(name).weight.uniform_(0.5, 1.5)
    weight, bias = torch.randn(8, 8) / 3, torch.randn(8)
    for i, norm in ((0, "blocks.1.norm1"), (2, "norm_f")):
        model = build_stitched(a, b, i, 1, weight, bias, at="normed")
        x, expected = hooked(a, b, i, 1, lambda h, n=norm: a.model.get_submodule(n)(h) @ weight.T + bias)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_fine_tuning_trains_only_what_the_levers_say():
    a, b = lm("a"), lm("b", blueprint="mamba_model", seed=1)
    task = make_task("bytes", {"seq_len": 12})
    weight = torch.randn(8, 8) / 3
    for learn, what, j in (("scale", "stitch", 0), ("map", "stitch+norm", 0), ("map+scale", "stitch+norm", 2)):
        model = build_stitched(a, b, 1, j, weight, torch.zeros(8))
        blueprint = stitched_blueprint(a, b, 1, j)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        params = {"finetune": what, "learn": learn, "finetune_steps": 3, "lr": 0.05}
        count = finetune(model, blueprint, task, params, batch_size=4, seed=0)
        names = trained_parameters(model, blueprint, what)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and changed <= set(names), (learn, changed)
        norms = {n for n in names if not n.startswith("stitch.")}
        expected = {"b_blocks.0.norm1.weight", "b_blocks.0.norm1.bias", "b_blocks.0.norm2.weight", "b_blocks.0.norm2.bias"}
        assert norms == (set() if what == "stitch" else expected if j == 0 else {"b_norm_f.weight", "b_norm_f.bias"})
        if learn == "scale":  # the closed-form directions kept: each row only rescaled
            assert count == 8 + 8
            ratio = model.state_dict()["stitch.weight"] / weight
            torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
            assert not torch.allclose(ratio, torch.ones_like(ratio))
        assert (
            dict(model.named_parameters()).keys()
            == dict(build_stitched(a, b, 1, j, weight, torch.zeros(8)).named_parameters()).keys()
        )


def test_stitch_block_trains_b_next_layer_whole_and_nothing_after_it():
    a, b = lm("a"), lm("b", blueprint="mamba_model", seed=1)
    task = make_task("bytes", {"seq_len": 12})
    for j in (0, 2):  # B continues with layers 1 and 2, or with its final norm only
        model = build_stitched(a, b, 1, j, torch.randn(8, 8) / 3, torch.zeros(8))
        blueprint = stitched_blueprint(a, b, 1, j)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        count = finetune(
            model, blueprint, task, {"finetune": "stitch+block", "learn": "map", "finetune_steps": 3, "lr": 0.05}, 4, 0
        )
        names = set(trained_parameters(model, blueprint, "stitch+block"))
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and changed <= names
        outside = {n for n in names if not n.startswith("stitch.")}
        if j == 0:
            layer = {n for n, _ in model.named_parameters() if n.startswith("b_blocks.0.")}
            assert outside == layer and len(layer) > 4  # the mixer's weights too, not only the norms
            assert not any(n.startswith("b_blocks.1.") for n in names)
        else:
            assert outside == {"b_norm_f.weight", "b_norm_f.bias"}
        assert count == sum(p.numel() for n, p in model.named_parameters() if n in names)


def test_the_wrong_depth_control_is_the_farthest_layer():
    assert [farthest_layer(i, 4) for i in range(4)] == [3, 3, 0, 0]
    assert farthest_layer(1, 2) == 0 and farthest_layer(0, 1) == 0


def _recipe(tmp_path, parameters: str, out: str = "out") -> dict:
    recipe = recipe_from_text(
        textwrap.dedent(f"""
        merge_method: stitch
        models:
          - {{name: tf, blueprint: gpt, set: {{d_model: 8, layers: 3, heads: 2, max_len: 16}}}}
          - {{name: mamba, blueprint: mamba_model, set: {{d_model: 8, layers: 2}}}}
        parameters: {parameters}
        data: {{task: bytes, options: {{seq_len: 16}}, batch_size: 4, eval_batches: 2}}
        """),
        "stitch.yaml",
        tmp_path,
    )
    folder, _ = run_merge(recipe, tmp_path / out, progress=False)
    return json.loads((folder / "report.json").read_text())["metrics"] | {"_out": str(folder)}


def test_a_language_model_stitch_reports_bits_and_picks_pairs_by_held_out_loss(tmp_path):
    report = _recipe(tmp_path, "{pairs: all, probe_batches: 2, finetune_steps: 0}")
    figures = ["loss", "bits", "bits_per_byte", "accuracy"]
    for values in [*report["sources"].values(), *report["pairs"].values(), report["best"]["closed_form"]]:
        assert set(figures) <= set(values)
    assert report["selected_by"] == "loss"
    best = min(report["pairs"], key=lambda k: report["pairs"][k]["loss"])
    assert f"{report['best']['layer_a']},{report['best']['layer_b']}" == best
    i, j = report["best"]["layer_a"], report["best"]["layer_b"]
    wrong = f"wrong depth (tf.{farthest_layer(i, 3)} → mamba.{j + 1})"
    assert set(report["controls"]) == {"random orthogonal map", "shuffled token pairing", wrong}
    for control in report["controls"].values():
        assert set(figures) <= set(control["closed_form"])
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "bits/byte" in text and "held-out loss" in text and "(by held-out loss)" in text
    assert (tmp_path / "out" / "stitch_bits_per_byte.png").exists()


def test_several_pairs_are_fine_tuned_and_the_controls_with_them(tmp_path):
    report = _recipe(
        tmp_path,
        "{layer_a: 2, layer_b: 0, probe_batches: 2, finetune_steps: 2, finetune_pairs: 3, finetune_controls: true, at: normed}",
    )
    assert [(c["layer_a"], c["layer_b"]) for c in report["candidates"]] == [(2, 0)]  # a forced pair is the only one
    assert set(report["controls"]) == {"random orthogonal map", "shuffled token pairing", "wrong depth (tf.0 → mamba.1)"}
    assert all("finetuned" in c and "bits_per_byte" in c["finetuned"] for c in report["controls"].values())
    assert "bits_per_byte" in report["best"]["finetuned"]
    report = _recipe(tmp_path, "{pairs: all, probe_batches: 2, finetune_steps: 1, finetune_pairs: 2}", "out2")
    assert len(report["candidates"]) == 2
    best = min(report["candidates"], key=lambda c: c["finetuned"]["loss"])
    assert (best["layer_a"], best["layer_b"]) == (report["best"]["layer_a"], report["best"]["layer_b"])
    ranked = sorted(report["pairs"], key=lambda k: report["pairs"][k]["loss"])[:2]
    assert [f"{c['layer_a']},{c['layer_b']}" for c in report["candidates"]] == ranked


def test_report_columns_and_ranking_follow_the_task_kind():
    lm_figures = {"loss": 2.0, "bits": 2.9, "accuracy": 0.3}
    assert columns("lm", lm_figures) == ["loss", "bits", "accuracy"] and headline("lm", lm_figures) == "bits"
    with_bytes = {**lm_figures, "bits_per_byte": 0.7}
    assert columns("lm", with_bytes) == ["loss", "bits", "bits_per_byte", "accuracy"]
    assert headline("lm", with_bytes) == "bits_per_byte" and headline("classify", {}) == "accuracy"
    low_loss, high_accuracy = {"loss": 1.0, "accuracy": 0.2}, {"loss": 2.0, "accuracy": 0.9}
    assert rank_key("lm", low_loss) < rank_key("lm", high_accuracy)
    assert rank_key("classify", high_accuracy) < rank_key("classify", low_loss)


def test_a_layer_out_of_range_is_refused_before_probing(tmp_path):
    with pytest.raises(MergeError, match=r"layer_a must be in 0\.\.2 and layer_b in 0\.\.1"):
        _recipe(tmp_path, "{layer_a: 3, layer_b: 0}")
