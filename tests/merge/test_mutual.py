"""Mutual / consistency training: the loss is what it says, and a run writes a loadable ensemble."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import ssmgraph
from ssmgraph.merge.consistency import kl as _kl
from ssmgraph.merge.mutual import Weights, joint_loss
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.train.fitting import make_task

RECIPE = """
merge_method: mutual
models:
  - {name: tf, blueprint: classifier, set: {mixer: mix.attention, d_model: 16, layers: 1}}
  - {name: lstm, blueprint: classifier, set: {mixer: mix.lstm, d_model: 16, layers: 1}}
parameters: {steps: 20, d_common: 8, baseline: true}
data: {task: digits, batch_size: 16, eval_batches: 2}
"""
LM_RECIPE = """
merge_method: mutual
models:
  - {name: tf, blueprint: llama, set: {d_model: 16, layers: 2, heads: 2}}
  - {name: lstm, blueprint: lstm, set: {d_model: 16, layers: 1, hidden: 16}}
data: {task: copying}
"""


def test_kl_term_matches_its_definition():
    torch.manual_seed(0)
    target, logits = torch.randn(5, 7), torch.randn(5, 7)
    tau = 2.0
    p = F.softmax(target / tau, -1)
    expected = (p * (p.log() - F.log_softmax(logits / tau, -1))).sum(-1).mean() * tau**2
    torch.testing.assert_close(_kl(target, logits, tau, None), expected)
    assert _kl(target, target, tau, None).abs() < 1e-6


def test_the_task_loss_is_the_mean_cross_entropy_over_scored_positions():
    """The training loss (train's batch sums, loss / count) equals the plain definition, to the
    bit, values and gradients, with ignored positions in a language model's targets."""
    from types import SimpleNamespace

    from ssmgraph.merge.consistency import task_loss
    from ssmgraph.train.tasks.base import IGNORE

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64).float().requires_grad_()
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[torch.rand(3, 7, generator=g) < 0.3] = IGNORE
    keep = targets != IGNORE
    picked = logits[keep].log_softmax(-1).gather(-1, targets[keep][:, None])
    reference = -picked.detach().double().sum() / keep.sum()
    loss = task_loss(SimpleNamespace(kind="lm"), logits, targets)
    reference_ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE)
    assert torch.equal(loss, reference_ce) and loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.equal(*(torch.autograd.grad(v, logits)[0] for v in (loss, reference_ce)))
    classes = torch.randint(0, 11, (3,), generator=g)
    scores = logits[:, 0].detach().requires_grad_()
    loss, reference_ce = task_loss(SimpleNamespace(kind="classify"), scores, classes), F.cross_entropy(scores, classes)
    assert torch.equal(loss, reference_ce)
    assert torch.equal(*(torch.autograd.grad(v, scores)[0] for v in (loss, reference_ce)))


def test_joint_loss_is_the_sum_of_its_weighted_parts(tmp_path):
    from ssmgraph.merge.joint import build_joint
    from ssmgraph.merge.run import plan

    recipe = recipe_from_text(textwrap.dedent(LM_RECIPE), "r.yaml", tmp_path)
    checked = plan(recipe)
    task = checked.task
    from ssmgraph.merge.context import MergeContext

    context = MergeContext(recipe, checked.models, checked.compatibility, dict(recipe.parameters), tmp_path, task, False)
    joint = build_joint(context, ["tf", "lstm"], share_embedding=True)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    w = Weights(kl=0.5, feature=0.25, distill=0.0, temperature=1.0)
    total, parts = joint_loss(joint, ["tf", "lstm"], task, batch.inputs, batch.targets, w)
    assert set(parts) == {"ce_tf", "ce_lstm", "kl", "feature"}
    assert float(total.detach()) == pytest.approx(
        parts["ce_tf"] + parts["ce_lstm"] + 0.5 * parts["kl"] + 0.25 * parts["feature"], rel=1e-5
    )
    alone, only = joint_loss(joint, ["tf", "lstm"], task, batch.inputs, batch.targets, Weights(0.0, 0.0, 0.0, 1.0))
    alone = alone.detach()
    assert set(only) == {"ce_tf", "ce_lstm"} and float(alone) == pytest.approx(only["ce_tf"] + only["ce_lstm"], rel=1e-6)


def test_a_mutual_run_writes_models_an_ensemble_and_a_report(tmp_path):
    recipe = recipe_from_text(textwrap.dedent(RECIPE), "r.yaml", tmp_path)
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["compatibility"] == "heterogeneous"
    evaluation = report["metrics"]["evaluation"]
    assert set(evaluation) == {"tf", "lstm", "ensemble"} and set(report["metrics"]["alone"]) == {"tf", "lstm"}
    log = report["metrics"]["log"]
    assert [r["step"] for r in log] == [10, 20] and {"ce_tf", "ce_lstm", "kl", "feature"} <= set(log[0])
    assert set(report["metrics"]["cka_after"]) == {"tf~lstm"}
    assert (out / "losses.png").stat().st_size > 0 and "| tf |" in (out / "report.md").read_text()
    ensemble = ssmgraph.load(out)
    features = torch.randn(3, 64, 1)
    alone = [ssmgraph.load(out / "models" / name) for name in ("tf", "lstm")]
    torch.testing.assert_close(ensemble(features), torch.stack([m(features) for m in alone]).mean(0), rtol=1e-5, atol=1e-6)
    assert (out / "merge.yaml").exists()


def test_mutual_needs_a_classification_or_lm_task(tmp_path):
    from ssmgraph.merge.context import MergeError

    task = make_task("adding", {})
    with pytest.raises(MergeError, match="classification or language-model"):
        from ssmgraph.merge.consistency import task_loss

        task_loss(task, torch.zeros(2, 1), torch.zeros(2))


def test_peer_weighting_scales_each_position_by_the_peers_confidence_or_correctness():
    from ssmgraph.merge.consistency import peer_weight

    torch.manual_seed(1)
    peer, logits = torch.randn(6, 5), torch.randn(6, 5)
    targets = torch.tensor([0, 1, 2, 3, 4, -100])  # the last position is ignored (IGNORE)
    confidence = peer_weight(peer, targets, "confidence")
    expected = F.softmax(peer, -1)[torch.arange(5), targets[:5]]
    torch.testing.assert_close(confidence[:5], expected)
    assert confidence[5] == 0
    correct = peer_weight(peer, targets, "correct")
    assert correct.tolist() == [float(peer[i].argmax() == targets[i]) for i in range(5)] + [0.0]
    assert peer_weight(peer, targets, "uniform") is None
    keep = targets != -100
    p = F.softmax(peer, -1)
    per = (p * (p.log() - F.log_softmax(logits, -1))).sum(-1)
    torch.testing.assert_close(_kl(peer, logits, 1.0, keep, confidence), (per * confidence)[keep].mean())


def test_consistency_modes_and_the_kl_warmup():
    params = {"kl_weight": 2.0, "feature_weight": 0.5, "distill_weight": 1.0, "temperature": 3.0}
    assert (
        Weights.of({**params, "consistency": "logits"}).feature == 0 and Weights.of({**params, "consistency": "logits"}).kl == 2
    )
    assert Weights.of({**params, "consistency": "features"}).kl == 0
    both = Weights.of({**params, "peer_weighting": "correct"})
    assert (both.kl, both.feature, both.temperature, both.peer_weighting) == (2.0, 0.5, 3.0, "correct")
    assert both.ramped(0, 3).kl == pytest.approx(0.5) and both.ramped(2, 3).feature == pytest.approx(0.375)
    assert both.ramped(3, 3) == both and both.ramped(0, 0) == both


def test_a_language_model_mutual_run_reports_bits_and_gains(tmp_path):
    text = """
    merge_method: mutual
    models:
      - {name: tf, blueprint: llama, set: {d_model: 16, layers: 1, heads: 2}}
      - {name: mamba, blueprint: mamba_model, set: {d_model: 16, layers: 1}}
    parameters: {steps: 10, d_common: 8, kl_warmup: 5, peer_weighting: confidence, temperature: 2.0}
    data: {task: bytes, options: {seq_len: 16}, batch_size: 4, eval_batches: 2}
    """
    recipe = recipe_from_text(textwrap.dedent(text), "r.yaml", tmp_path)
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert set(metrics["gain"]) == {"tf", "mamba"}
    for name in ("tf", "mamba"):
        gain = metrics["alone"][name]["bits_per_byte"] - metrics["evaluation"][name]["bits_per_byte"]
        assert metrics["gain"][name] == pytest.approx(gain)
    assert "bits/byte (together)" in (out / "report.md").read_text()


def test_the_ensemble_target_is_each_model_s_kl_towards_the_mean_of_all_logits():
    from ssmgraph.merge.consistency import peer_weight
    from ssmgraph.merge.mutual import _mutual_kl

    torch.manual_seed(2)
    names = ["a", "b", "c"]
    logits = {n: torch.randn(2, 5, 7, requires_grad=True) for n in names}
    targets = torch.randint(0, 7, (2, 5))
    targets[0, 0] = -100
    keep = targets != -100
    w = Weights(kl=1.0, feature=0.0, distill=0.0, temperature=2.0, peer_weighting="confidence", target="ensemble")
    mean = torch.stack([logits[n].detach() for n in names]).mean(0)
    weight = peer_weight(mean, targets, "confidence")
    expected = sum(_kl(mean, logits[n], 2.0, keep, weight) for n in names)
    got = _mutual_kl(logits, names, targets, keep, w)
    torch.testing.assert_close(got, expected)
    peers = _mutual_kl(logits, names, targets, keep, replace(w, target="peers"))
    assert not torch.allclose(got, peers)  # a different target, not a rescaling of the same one
    got.backward()
    assert all(logits[n].grad is not None and logits[n].grad.abs().sum() > 0 for n in names)
    assert (
        Weights.of(
            {"kl_weight": 1.0, "feature_weight": 0.0, "distill_weight": 0.0, "temperature": 1.0, "kl_target": "ensemble"}
        ).target
        == "ensemble"
    )
