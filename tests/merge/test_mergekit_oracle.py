"""mergekit as the oracle: tiny random Llama (and GPT-2) checkpoints merged by mergekit's own
Python API and by ssmgraph (import hf → native recipe → export hf), compared tensor by tensor.

Deterministic methods agree to 1e-6 on every Hugging Face tensor; DARE, whose masks come from
two different random streams, agrees in distribution (kept fraction, L1 norm per tensor).
Nothing is downloaded: the checkpoints are built from transformers' config classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

mergekit = pytest.importorskip("mergekit")
transformers = pytest.importorskip("transformers")

from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
from mergekit.sparsify import magnitude
from safetensors.torch import load_file

from ssmgraph.interop import export_hf, import_hf
from ssmgraph.merge import weights as W
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge as ssmgraph_merge

TOL = 1e-6
NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
NAMES = ("base", "a", "b")
Models = dict[str, tuple[Path, Path]]
"""name -> (its Hugging Face folder, the model imported from it)."""


def _llama() -> Any:
    return transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **NO_TOKENS,
    )


def _gpt2() -> Any:
    return transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=4, **NO_TOKENS)


def _phi3() -> Any:
    return transformers.Phi3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **NO_TOKENS,
    )


def _up_quieter(key: str, noise: torch.Tensor) -> torch.Tensor:
    """gate_up_proj's up rows fine-tuned ten times less than its gate rows: a top-k or an angle over the
    whole tensor differs from one per half."""
    if key.endswith("gate_up_proj.weight"):
        noise[noise.shape[0] // 2 :] *= 0.1
    return noise


def _family(root: Path, config: Any, cls: Any, shape: Any = lambda key, noise: noise) -> Models:
    """A random base and two fine-tunes of it (the base plus noise, ``shape``d per tensor): name -> (HF folder, imported model)."""
    torch.manual_seed(0)
    model = cls(config).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    found = {}
    for i, name in enumerate(NAMES):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                noise = shape(key, 0.01 * torch.randn(tensor.shape, generator=gen)) if i and tensor.is_floating_point() else 0
                tensor.copy_(start[key] + noise)
        model.save_pretrained(root / name, safe_serialization=True)
        found[name] = (root / name, import_hf(root / name, root / f"{name}-ssm"))
    return found


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return _family(tmp_path_factory.mktemp("llama"), _llama(), transformers.LlamaForCausalLM)


@pytest.fixture(scope="module")
def phi3(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return _family(tmp_path_factory.mktemp("phi3"), _phi3(), transformers.Phi3ForCausalLM, _up_quieter)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return _family(tmp_path_factory.mktemp("gpt2"), _gpt2(), transformers.GPT2LMHeadModel)


def _mergekit(models: Models, config: dict[str, Any], out: Path) -> dict[str, torch.Tensor]:
    """mergekit's merge of ``config``, where ``@name`` stands for that model's HF folder."""
    config = _substitute(config, {f"@{name}": str(hf) for name, (hf, _) in models.items()})
    merge = MergeConfiguration.model_validate({**config, "dtype": "float32", "out_dtype": "float32"})
    run_merge(merge, str(out), MergeOptions(cuda=False, copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0))
    return _tensors(out)


def _ssmgraph(models: Models, recipe: dict[str, Any], weights: dict[str, float], out: Path) -> dict[str, torch.Tensor]:
    """ssmgraph's merge of the imported ``models`` by ``recipe``, exported back to HF tensors."""
    sources = [
        {"name": name, "checkpoint": str(ssm), **({"parameters": {"weight": weights[name]}} if name in weights else {})}
        for name, (_, ssm) in models.items()
    ]
    text = yaml.safe_dump({**recipe, "models": sources})
    ssmgraph_merge(recipe_from_text(text, "merge.yaml", out.parent), out / "merged", progress=False)
    return _tensors(export_hf(out / "merged", out / "hf"))


def _both(
    models: Models, tmp_path: Path, mk: dict[str, Any], recipe: dict[str, Any], weights: dict[str, float]
) -> tuple[dict, dict]:
    return _ssmgraph(models, recipe, weights, tmp_path / "ssm"), _mergekit(models, mk, tmp_path / "mk")


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _assert_every_tensor_close(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        torch.testing.assert_close(ours[key], tensor, rtol=0, atol=TOL, msg=lambda m, key=key: f"{key}: {m}")


def _pair(models: Models, *names: str) -> Models:
    return {name: models[name] for name in names}


WEIGHTS = {"a": 0.7, "b": 0.4}
MK_TASK_MODELS = {
    "base_model": "@base",
    "models": [{"model": f"@{name}", "parameters": {"weight": w}} for name, w in WEIGHTS.items()],
}


def test_linear_agrees_with_mergekit(llama, tmp_path):
    weights = {"base": 1.0, **WEIGHTS}
    mk = {"merge_method": "linear", "models": [{"model": f"@{n}", "parameters": {"weight": w}} for n, w in weights.items()]}
    _assert_every_tensor_close(*_both(llama, tmp_path, mk, {"merge_method": "linear"}, weights))


def test_task_arithmetic_agrees_with_mergekit(llama, tmp_path):
    mk = {"merge_method": "task_arithmetic", **MK_TASK_MODELS, "parameters": {"lambda": 0.8}}
    recipe = {"merge_method": "task_arithmetic", "base_model": "base", "parameters": {"scale": 0.8}}
    _assert_every_tensor_close(*_both(llama, tmp_path, mk, recipe, WEIGHTS))


@pytest.mark.parametrize("density", [0.3, 0.5])
def test_ties_agrees_with_mergekit_per_hf_tensor(llama, tmp_path, density):
    """q_proj, k_proj and v_proj are trimmed each to its own top-k, not over the stacked qkv."""
    mk = {"merge_method": "ties", **MK_TASK_MODELS, "parameters": {"density": density, "lambda": 0.9}}
    recipe = {"merge_method": "ties", "base_model": "base", "parameters": {"density": density, "scale": 0.9}}
    _assert_every_tensor_close(*_both(llama, tmp_path, mk, recipe, WEIGHTS))


def test_ties_on_gpt2_merges_c_attn_as_one_tensor_as_mergekit(gpt2, tmp_path):
    mk = {"merge_method": "ties", **MK_TASK_MODELS, "parameters": {"density": 0.4}}
    recipe = {"merge_method": "ties", "base_model": "base", "parameters": {"density": 0.4}}
    _assert_every_tensor_close(*_both(gpt2, tmp_path, mk, recipe, WEIGHTS))


def test_ties_and_slerp_on_phi3_merge_gate_up_proj_as_one_tensor_as_mergekit(phi3, tmp_path):
    """w_gate and w_up are the rows of one gate_up_proj: one top-k and one angle over both, as mergekit
    (per half, the quieter up rows would keep as many entries as the gate rows, and their own angle)."""
    mk = {"merge_method": "ties", **MK_TASK_MODELS, "parameters": {"density": 0.4}}
    recipe = {"merge_method": "ties", "base_model": "base", "parameters": {"density": 0.4}}
    _assert_every_tensor_close(*_both(phi3, tmp_path / "ties", mk, recipe, WEIGHTS))
    mk = {
        "merge_method": "slerp",
        "base_model": "@base",
        "models": [{"model": "@base"}, {"model": "@a"}],
        "parameters": {"t": 0.3},
    }
    recipe = {"merge_method": "slerp", "base_model": "base", "parameters": {"t": 0.3}}
    _assert_every_tensor_close(*_both(_pair(phi3, "base", "a"), tmp_path / "slerp", mk, recipe, {}))


@pytest.mark.parametrize("base", ["base", "a"])
def test_slerp_agrees_with_mergekit_and_measures_t_from_base_model(llama, tmp_path, base):
    mk = {
        "merge_method": "slerp",
        "base_model": f"@{base}",
        "models": [{"model": "@base"}, {"model": "@a"}],
        "parameters": {"t": 0.3},
    }
    recipe = {"merge_method": "slerp", "base_model": base, "parameters": {"t": 0.3}}
    ours, theirs = _both(_pair(llama, "base", "a"), tmp_path, mk, recipe, {})
    _assert_every_tensor_close(ours, theirs)
    near, far = _tensors(llama[base][0]), _tensors(llama["a" if base == "base" else "base"][0])
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (ours[key] - near[key]).norm() < (ours[key] - far[key]).norm()  # t = 0.3 lies nearer base_model


def test_dare_linear_agrees_with_mergekit_in_distribution(llama, tmp_path):
    """One task vector: both keep about `density` of each HF tensor's entries and rescale each
    to exactly its L1 norm (q_proj, k_proj, v_proj separately)."""
    density = 0.4
    mk = {
        "merge_method": "dare_linear",
        "base_model": "@base",
        "models": [{"model": "@a", "parameters": {"weight": 1.0, "density": density}}],
    }
    recipe = {"merge_method": "dare", "base_model": "base", "parameters": {"density": density}, "seed": 3}
    ours, theirs = _both(_pair(llama, "base", "a"), tmp_path, mk, recipe, {})
    base, source = _tensors(llama["base"][0]), _tensors(llama["a"][0])
    for key in theirs:
        if base[key].numel() < 1000:  # the norms' weights: too few entries for a kept fraction
            continue
        for merged in (ours, theirs):
            moved, delta = merged[key] - base[key], source[key] - base[key]
            assert abs((moved != 0).double().mean().item() - density) < 0.05, key
            assert (moved.abs().sum() / delta.abs().sum()).item() == pytest.approx(1.0, abs=1e-4), key


def test_dare_ties_agrees_with_mergekit_in_distribution(llama, tmp_path):
    density = 0.5
    models = [{"model": f"@{n}", "parameters": {"weight": w, "density": density}} for n, w in WEIGHTS.items()]
    mk = {"merge_method": "dare_ties", "base_model": "@base", "models": models}
    recipe = {"merge_method": "dare", "base_model": "base", "parameters": {"density": density, "ties": True}}
    ours, theirs = _both(llama, tmp_path, mk, recipe, WEIGHTS)
    base = _tensors(llama["base"][0])
    for key in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        moved = [m[key] - base[key] for m in (ours, theirs)]
        fractions = [(d != 0).double().mean().item() for d in moved]
        assert abs(fractions[0] - fractions[1]) < 0.05, key  # about 1 − (1 − p)² of the entries
        assert moved[0].abs().sum().item() == pytest.approx(moved[1].abs().sum().item(), rel=0.1), key


def test_ties_trim_breaks_magnitude_ties_as_mergekit():
    """Many equal magnitudes at the threshold: exactly k kept, the same k as mergekit's magnitude()."""
    gen = torch.Generator().manual_seed(0)
    delta = torch.randint(-3, 4, (64, 48), generator=gen).float()
    base, model = {"w": torch.zeros_like(delta)}, {"w": delta}
    for density in (0.1, 0.37, 0.5, 0.9):
        ours = W.ties(base, [model], [1.0], density=density)["w"]
        assert int((ours != 0).sum()) <= max(1, int(density * delta.numel()))
        torch.testing.assert_close(ours, magnitude(delta, density), rtol=0, atol=0)
