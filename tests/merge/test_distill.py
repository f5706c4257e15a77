"""Distillation across architectures: the loss is what it says, and a short run brings the
student closer to its teacher than the same student trained alone."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

import ssmgraph
from ssmgraph.merge.context import MergeContext, MergeError
from ssmgraph.merge.distill import distill_loss, freeze_teachers, roles
from ssmgraph.merge.joint import build_joint, view
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import plan, run_merge

RECIPE = """
merge_method: distill
models:
  - {name: teacher, blueprint: gpt, set: {d_model: 16, layers: 1, heads: 2, max_len: 32}}
  - {name: student, blueprint: mamba_model, set: {d_model: 16, layers: 2}}
parameters: {steps: 30, lr: 0.01, alpha: 0.9, temperature: 2.0, d_common: 8}
data: {task: bytes, options: {seq_len: 16}, batch_size: 8, eval_batches: 2}
"""


def _context(tmp_path, text: str = RECIPE) -> MergeContext:
    recipe = recipe_from_text(textwrap.dedent(text), "r.yaml", tmp_path)
    checked = plan(recipe)
    return MergeContext(recipe, checked.models, checked.compatibility, dict(recipe.parameters), tmp_path, checked.task, False)


def test_the_loss_is_the_hand_computed_mix_of_task_loss_kl_and_features(tmp_path):
    context = _context(tmp_path)
    student, teachers = roles(context)
    assert (student, teachers) == ("student", ["teacher"])
    joint = build_joint(context, ["student", "teacher"], share_embedding=False)
    batch = context.task.sample(2, torch.Generator().manual_seed(0))
    params = {"alpha": 0.3, "temperature": 2.0, "feature_weight": 0.7}
    total, parts = distill_loss(joint, "student", ["teacher"], context.task, batch.inputs, batch.targets, params)
    with torch.no_grad():
        s = view(joint, "student")(batch.inputs).double()
        t = view(joint, "teacher")(batch.inputs).double()
    ce = F.cross_entropy(s.reshape(-1, 256), batch.targets.reshape(-1))
    p = F.softmax(t / 2, -1)
    kl = (p * (p.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-4) and parts["kl"] == pytest.approx(float(kl), rel=1e-4)
    expected = 0.7 * float(ce) + 0.3 * float(kl) + 0.7 * parts["feature"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5) and parts["feature"] > 0


def test_teachers_and_their_projections_are_frozen_the_student_learns(tmp_path):
    context = _context(tmp_path)
    joint = build_joint(context, ["student", "teacher"], share_embedding=False)
    freeze_teachers(context, joint, ["teacher"])
    learning = {name for name, p in joint.named_parameters() if p.requires_grad}
    assert learning and all(name.startswith(("student_", "taps.student.")) for name in learning)
    assert any(name.startswith("taps.student.") for name in learning)


def test_an_unknown_student_is_refused(tmp_path):
    context = _context(tmp_path, RECIPE.replace("steps: 30,", "student: pupil, steps: 30,"))
    with pytest.raises(MergeError, match="student 'pupil' is not one of"):
        roles(context)


def test_a_short_distill_run_brings_the_student_closer_to_the_teacher(tmp_path):
    text = RECIPE.replace("steps: 30", "steps: 15").replace("batch_size: 8, eval_batches: 2", "batch_size: 4, eval_batches: 1")
    recipe = recipe_from_text(textwrap.dedent(text), "r.yaml", tmp_path)
    out, _ = run_merge(recipe, tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    agreement = report["metrics"]["agreement"]
    distilled, alone = (agreement[k]["teacher"]["kl"] for k in ("distilled", "alone"))
    assert distilled < alone  # trained alone, the student drifts away from the (untrained) teacher; distilled it follows it
    assert set(report["metrics"]["evaluation"]) == {"teacher", "student", "alone"}
    student = ssmgraph.load(out)
    tokens = torch.randint(0, 256, (1, 8))
    assert student(tokens).shape == (1, 8, 256) and (out / "models" / "alone").is_dir()
    assert "top-1 agreement with teacher" in (out / "report.md").read_text()


IMPORTED_MODELS = "models: [{name: llama, checkpoint: llama}, {name: mamba, checkpoint: mamba}]"
IMPORTED_DATA = "data: {task: bytes, options: {seq_len: 8}, batch_size: 2, eval_batches: 1}"


def _import_llama_and_mamba(tmp_path, layers: int) -> None:
    """A tiny Llama and a tiny Mamba from transformers' config classes (random weights, one byte
    vocabulary), saved and imported as ``tmp_path/llama`` and ``tmp_path/mamba``."""
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop import import_hf

    common = {"vocab_size": 256, "hidden_size": 16, "num_hidden_layers": layers, "bos_token_id": None, "eos_token_id": None}
    configs = {
        "llama": transformers.LlamaConfig(
            intermediate_size=24, num_attention_heads=2, num_key_value_heads=1, pad_token_id=None, **common
        ),
        "mamba": transformers.MambaConfig(state_size=4, conv_kernel=2, time_step_rank=2, pad_token_id=None, **common),
    }
    torch.manual_seed(0)
    for name, config in configs.items():
        model_class = transformers.LlamaForCausalLM if name == "llama" else transformers.MambaForCausalLM
        model_class(config).save_pretrained(tmp_path / "hf" / name)
        import_hf(tmp_path / "hf" / name, tmp_path / name)


@pytest.mark.slow
def test_imported_hugging_face_models_distill_and_train_together(tmp_path):
    """Two tiny transformers models (random weights, one byte vocabulary), imported: a Llama
    teaches a Mamba, and the two train together."""
    _import_llama_and_mamba(tmp_path, layers=1)
    for method, parameters in (
        ("distill", "{steps: 2, feature_weight: 0.5, d_common: 8}"),
        ("mutual", "{steps: 2, d_common: 8}"),
    ):
        text = f"merge_method: {method}\n{IMPORTED_MODELS}\nparameters: {parameters}\n{IMPORTED_DATA}\n"
        recipe = recipe_from_text(text, "r.yaml", tmp_path)
        out, _ = run_merge(recipe, tmp_path / f"out-{method}", progress=False)
        report = json.loads((out / "report.json").read_text())
        assert report["compatibility"] == "heterogeneous"
        assert "bits_per_byte" in report["metrics"]["evaluation"]["mamba"]
        assert ssmgraph.load(out)(torch.randint(0, 256, (1, 5))).shape == (1, 5, 256)


def test_imported_hugging_face_models_stitch_and_superpose(tmp_path):
    """The same two imported models (two layers each), stitched and put into superposition."""
    _import_llama_and_mamba(tmp_path, layers=2)
    for method, parameters in (
        ("stitch", "{pairs: all, probe_batches: 2, finetune_steps: 2, finetune: stitch+block}"),
        ("superpose", "{steps: 2, options_a: {corpus: en}, options_b: {corpus: fr}, autoencoder: causal_conv}"),
    ):
        text = f"merge_method: {method}\n{IMPORTED_MODELS}\nparameters: {parameters}\n{IMPORTED_DATA}\n"
        out, _ = run_merge(recipe_from_text(text, "r.yaml", tmp_path), tmp_path / f"out-{method}", progress=False)
        metrics = json.loads((out / "report.json").read_text())["metrics"]
        if method == "stitch":
            assert "bits_per_byte" in metrics["best"]["finetuned"] and set(metrics["sources"]) == {"llama", "mamba"}
        else:
            assert set(metrics["perplexity_ratio"]) == {"a", "b"} and metrics["superposed"]["bpb_b"] > 0
        assert ssmgraph.load(out)(torch.randint(0, 256, (1, 5))).shape == (1, 5, 256)
