"""Every shipped blueprint and every create_model architecture: builds, decodes step by step."""

from __future__ import annotations

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.graph.compile import example_inputs
from ssmgraph.zoo import ARCHITECTURES

SMALL = {"d_model": 16, "layers": 3}  # hybrid puts attention at layer 2
CLASSIFIERS = ("classifier", "token_classifier")
LANGUAGE_MODELS = sorted(name for name in builtin_blueprints() if name not in ("seq2seq", "pair", *CLASSIFIERS))


def small(name: str) -> ssmgraph.CompiledModel:
    params = ssmgraph.load_blueprint(name).params
    return ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params})


def test_every_shipped_blueprint_builds_and_runs() -> None:
    for name in builtin_blueprints():
        model = small(name) if name not in ("seq2seq", "pair") else ssmgraph.build(name, d_model=16)
        out = model(*example_inputs(model, batch=2, seq=6))
        outs = out.values() if isinstance(out, dict) else [out]
        expected = (2, 10) if name in CLASSIFIERS else (2, 6)
        assert all(o.shape[:2] == expected and torch.isfinite(o).all() for o in outs), name


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_step_by_step_logits_equal_the_full_forward(name: str) -> None:
    torch.manual_seed(0)
    model = small(name).double().eval()
    assert model.supports_step, name
    (tokens,) = example_inputs(model, batch=2, seq=7)
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(2, dtype=torch.float64)
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state=state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["s4d", "lstm", "gpt"])
def test_generate_greedy_agrees_with_forward(name: str) -> None:
    torch.manual_seed(0)
    model = small(name).double().eval()
    prompt = torch.randint(0, 256, (2, 4))
    out = model.generate(prompt, 4, temperature=0)
    assert torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        for t in range(4, 8):
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_create_model_builds_every_architecture(architecture: str, tmp_path) -> None:
    arch = ARCHITECTURES[architecture]
    model = ssmgraph.create_model(architecture, arch.ssm_layers[0] if arch.ssm_layers else None, d_model=16, num_layers=3)
    inputs = example_inputs(model, batch=1, seq=5)
    ssmgraph.save(model, tmp_path / "m")  # a create_model model is a blueprint + weights
    torch.testing.assert_close(ssmgraph.load(tmp_path / "m")(*inputs), model(*inputs))


def test_create_model_passes_layer_kwargs_and_ssm_choice() -> None:
    model = ssmgraph.create_model("s4d", d_model=16, d_state=8, num_layers=3, layer_kwargs={"init": "legs"})
    assert [model.nodes[f"blocks.{i}.mix"].block for i in range(3)] == ["mix.s4d"] * 3
    assert model.blueprint.nodes["blocks"].body.nodes["mix"].args == {"d_state": 8, "init": "legs"}
    h3 = ssmgraph.create_model("h3", "s4", d_model=16, d_state=8, num_layers=1)
    assert h3.blueprint.nodes["blocks"].body.nodes["mix"].args["inner"] == "s4"
    transformer = ssmgraph.create_model("transformer", d_model=32, num_layers=1, architecture_kwargs={"num_heads": 2})
    assert transformer.blueprint.params["heads"] == 2


def test_create_model_explains_bad_choices() -> None:
    with pytest.raises(ssmgraph.SsmgraphError, match="did you mean 'mamba'"):
        ssmgraph.create_model("mambo")
    with pytest.raises(ssmgraph.SsmgraphError, match="takes ssm_layer in: s4d, s4"):
        ssmgraph.create_model("h3", "mamba")
    with pytest.raises(ssmgraph.BlueprintError, match="did you mean 'init'"):
        ssmgraph.create_model("s4d", layer_kwargs={"init_method": "legs"})
