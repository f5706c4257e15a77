"""Parameters stacking several Hugging Face tensors (Llama's qkv) are merged part by part.

Each method's result on a stacked tensor is checked against its paper's formula applied to each
part separately, reimplemented here independently of ssmgraph.merge.weights (torch.topk for
TIES's trim, the textbook SLERP, the L1 rule for DARE). The rule for which parameters have parts
(ssmgraph.merge.parts.fused_parts) and SLERP's base through a recipe are checked too.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

import ssmgraph
from ssmgraph.merge import weights as W
from ssmgraph.merge.parts import fused_parts
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge

SIZES = (8, 4, 4)  # q, k, v rows: 2 heads of 4, 1 key/value head
KEY = "qkv"


def _stack(seed: int, scale: float = 1.0) -> torch.Tensor:
    """q, k and v of very different magnitudes, so a statistic over the stack differs from one per part."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, 6, generator=gen, dtype=torch.float64) * s * scale for n, s in zip(SIZES, (1.0, 10.0, 0.1))])


def _per_part(reference, *stacks: torch.Tensor) -> torch.Tensor:
    return torch.cat([reference(*parts) for parts in zip(*(s.split(SIZES) for s in stacks))])


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim (Yadav et al. 2023, eq. 1): keep the top ⌊density·n⌋ entries by magnitude."""
    k = max(1, int(density * delta.numel()))
    flat = delta.flatten()
    kept = torch.zeros_like(flat)
    idx = torch.topk(flat.abs(), k).indices
    kept[idx] = flat[idx]
    return kept.view_as(delta)


def _ties_reference(base: torch.Tensor, *models: torch.Tensor, density: float, weights: list[float]) -> torch.Tensor:
    """Trim, elect the sign of Σ wᵢ τᵢ, disjoint weighted mean of the agreeing entries."""
    taus = [w * _trim(m - base, density) for w, m in zip(weights, models)]
    elected = torch.sign(sum(taus))
    elected[elected == 0] = 1
    total = torch.zeros_like(base)
    mass = torch.zeros_like(base)
    for w, tau in zip(weights, taus):
        agree = torch.sign(tau) == elected
        total += torch.where(agree, tau, 0.0)
        mass += agree.to(base.dtype) * w
    return base + total / torch.where(mass == 0, 1.0, mass)


def _slerp_reference(v0: torch.Tensor, v1: torch.Tensor, t: float) -> torch.Tensor:
    """Shoemake 1985 on the flattened tensors: angle of their directions, weights on the tensors."""
    cos = float(torch.dot(v0.flatten(), v1.flatten()) / (v0.norm() * v1.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * v0 + t * v1
    omega = math.acos(cos)
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)


def test_ties_trims_and_elects_each_part_as_a_tensor_of_its_own():
    base, x, y = _stack(0), _stack(1), _stack(2)
    weights = [0.6, 1.3]
    out = W.ties({KEY: base}, [{KEY: x}, {KEY: y}], weights, density=0.3, parts={KEY: SIZES})[KEY]
    expected = _per_part(lambda b, m, n: _ties_reference(b, m, n, density=0.3, weights=weights), base, x, y)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    whole = W.ties({KEY: base}, [{KEY: x}, {KEY: y}], weights, density=0.3)[KEY]
    assert not torch.allclose(whole, expected)  # over the stack, k's large entries crowd out v's


def test_slerp_measures_each_parts_angle():
    a, b = _stack(3), _stack(4)
    out = W.slerp({KEY: a}, {KEY: b}, 0.35, parts={KEY: SIZES})[KEY]
    torch.testing.assert_close(out, _per_part(lambda u, v: _slerp_reference(u, v, 0.35), a, b), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(W.slerp({KEY: a}, {KEY: b}, 0.35)[KEY], out)


def test_dare_rescales_each_part_to_its_own_l1_norm():
    base, model = _stack(5), _stack(6)
    out = W.dare({KEY: base}, [{KEY: model}], [1.0], density=0.5, generator=torch.Generator().manual_seed(0), parts={KEY: SIZES})
    for moved, delta in zip((out[KEY] - base).split(SIZES), (model - base).split(SIZES)):
        kept = moved != 0
        factor = delta.abs().sum() / delta[kept].abs().sum()  # ‖δ‖₁ / ‖kept δ‖₁ of this part alone
        torch.testing.assert_close(moved[kept], delta[kept] * factor, rtol=1e-12, atol=1e-15)


def test_linear_and_task_arithmetic_are_the_same_with_or_without_parts():
    base, x, y = _stack(7), _stack(8), _stack(9)
    parts = {KEY: SIZES}
    for merge in (
        lambda **kw: W.linear([{KEY: x}, {KEY: y}], [0.3, 0.9], **kw),
        lambda **kw: W.task_arithmetic({KEY: base}, [{KEY: x}, {KEY: y}], [0.3, 0.9], scale=0.7, **kw),
    ):
        torch.testing.assert_close(merge(parts=parts)[KEY], merge()[KEY], rtol=0, atol=1e-12)


def test_parts_that_do_not_stack_into_the_tensor_are_an_error():
    with pytest.raises(ValueError, match="do not stack"):
        W.linear([{KEY: _stack(0)}, {KEY: _stack(1)}], [1.0, 1.0], parts={KEY: (8, 4, 3)})


# ---- which parameters have parts ------------------------------------------------------------------


def test_a_llama_blueprint_splits_qkv_into_q_k_v_rows():
    model = ssmgraph.build("llama", vocab=11, d_model=16, layers=2, heads=4, kv_heads=2)
    # q: heads · head_dim = 16 rows; k and v: kv_heads · head_dim = 2 · 4 = 8 rows each
    assert fused_parts(model) == {f"blocks.{i}.mix.qkv.weight": (16, 8, 8) for i in range(2)}


@pytest.mark.parametrize("name", ["gpt", "transformer", "mamba_model"])
def test_other_blueprints_merge_every_parameter_whole(name):
    assert fused_parts(ssmgraph.build(name, vocab=11, d_model=16, layers=1)) == {}


def test_imported_checkpoints_split_as_their_hugging_face_tensors(tmp_path):
    """Llama's q_proj/k_proj/v_proj (weights and biases) are parts; GPT-2's c_attn is one tensor."""
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop import import_hf

    no_tokens = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    llama = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        attention_bias=True,
        **no_tokens,
    )
    gpt2 = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=1, n_head=4, **no_tokens)
    transformers.LlamaForCausalLM(llama).save_pretrained(tmp_path / "llama")
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(tmp_path / "gpt2")
    llama_model = ssmgraph.load(import_hf(tmp_path / "llama", tmp_path / "llama-ssm"))
    gpt2_model = ssmgraph.load(import_hf(tmp_path / "gpt2", tmp_path / "gpt2-ssm"))
    assert fused_parts(llama_model) == {"blocks.0.mix.qkv.weight": (32, 8, 8), "blocks.0.mix.qkv.bias": (32, 8, 8)}
    assert fused_parts(gpt2_model) == {}


# ---- SLERP's base through a recipe ---------------------------------------------------------------


def test_slerp_interpolates_from_base_model(tmp_path):
    models = {}
    for i, name in enumerate(("first", "second")):
        torch.manual_seed(i)
        models[name] = ssmgraph.build("llama", vocab=11, d_model=16, layers=1, heads=4, kv_heads=2)
        ssmgraph.save(models[name], tmp_path / name)

    def merged(base: str, t: float) -> dict[str, torch.Tensor]:
        text = f"""
            merge_method: slerp
            models: [{{name: first, checkpoint: first}}, {{name: second, checkpoint: second}}]
            base_model: {base}
            parameters: {{t: {t}}}
        """
        out = tmp_path / f"out-{base}-{t}"
        run_merge(recipe_from_text(textwrap.dedent(text), "merge.yaml", tmp_path), out, progress=False)
        return ssmgraph.load(out).state_dict()

    second, first = models["second"].state_dict(), models["first"].state_dict()
    for key, tensor in merged("second", 0.0).items():
        torch.testing.assert_close(tensor, second[key], rtol=0, atol=1e-6)
    parts = fused_parts(models["second"])
    expected = W.slerp(second, first, 0.3, parts=parts)
    for key, tensor in merged("second", 0.3).items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6)


def test_joined_keys_merge_as_one_stacked_tensor():
    """W.Joined (Phi-3's w_gate and w_up rows of one gate_up_proj): one top-k over both, split back; a key kept
    (or missing) leaves the group merged key by key."""
    gen = torch.Generator().manual_seed(0)
    base = {"g": torch.randn(4, 3, generator=gen), "u": torch.randn(2, 3, generator=gen)}
    other = {"g": base["g"] + torch.randn(4, 3, generator=gen), "u": base["u"] + 0.01 * torch.randn(2, 3, generator=gen)}
    joined = W.Joined(("g", "u"))
    got = W.ties(base, [other], [1.0], density=0.5, parts={"g": joined, "u": joined})
    whole = W.ties({"x": torch.cat([base["g"], base["u"]])}, [{"x": torch.cat([other["g"], other["u"]])}], [1.0], density=0.5)
    assert torch.equal(torch.cat([got["g"], got["u"]]), whole["x"])
    assert torch.equal(got["u"], base["u"])  # the quiet rows lose every entry to the loud ones: not so per key
    apart = W.ties(base, [other], [1.0], density=0.5, parts={"g": joined, "u": joined}, keep={"u"})
    assert torch.equal(apart["g"], W.ties(base, [other], [1.0], density=0.5)["g"])
