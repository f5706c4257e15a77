"""On a CUDA device (skipped without one): every shipped blueprint matches its CPU self.

CI has no GPU; these run where one is present (`python -m pytest tests/test_cuda.py`).
"""

from __future__ import annotations

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.graph.compile import example_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = {"d_model": 32, "layers": 3}
MULTI_OUTPUT = ("seq2seq", "pair")


def small(name: str) -> ssmgraph.CompiledModel:
    params = ssmgraph.load_blueprint(name).params
    return ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params})


def _outputs(out):
    return list(out.values()) if isinstance(out, dict) else [out]


@pytest.mark.parametrize("name", sorted(builtin_blueprints()))
def test_cuda_forward_and_gradients_equal_cpu(name: str) -> None:
    torch.manual_seed(0)
    cpu = small(name) if name not in MULTI_OUTPUT else ssmgraph.build(name, d_model=32)
    cpu = cpu.double()
    gpu = ssmgraph.build(cpu.blueprint).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    inputs = [x.double() if x.is_floating_point() else x for x in example_inputs(cpu, batch=2, seq=40)]
    out_cpu, out_gpu = _outputs(cpu(*inputs)), _outputs(gpu(*(x.cuda() for x in inputs)))
    for a, b in zip(out_cpu, out_gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-9)
    sum(o.square().mean() for o in out_cpu).backward()
    sum(o.square().mean() for o in out_gpu).backward()
    grads_gpu = dict(gpu.named_parameters())
    for key, p in cpu.named_parameters():
        if p.grad is None:  # e.g. a tap projection the plain forward does not use
            assert grads_gpu[key].grad is None, key
            continue
        torch.testing.assert_close(grads_gpu[key].grad.cpu(), p.grad, rtol=1e-7, atol=1e-9, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", ["mamba", "s4d", "s4", "llama", "hybrid"])
def test_cuda_step_by_step_equals_forward_and_bf16_autocast_runs(name: str) -> None:
    torch.manual_seed(0)
    model = small(name).cuda().eval()
    (tokens,) = example_inputs(model, batch=2, seq=12)
    tokens = tokens.cuda()
    with torch.no_grad():
        full = model(tokens)
        state, steps = model.init_state(2, device="cuda"), []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state=state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=2e-4, atol=2e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = model(tokens)
    assert torch.isfinite(mixed).all() and (mixed.float().softmax(-1) - full.softmax(-1)).abs().max() < 0.1


def test_the_held_out_examples_table_reads_a_model_on_the_gpu() -> None:
    from ssmgraph.train.examples import examples_table
    from ssmgraph.train.fitting import make_task

    task = make_task("selective_copying", {"seq_len": 16, "n_memorize": 2})
    model = ssmgraph.build("gpt", d_model=16, layers=1, heads=2, vocab=task.vocab_size, max_len=16).cuda()
    assert examples_table(model, task).row_count == 3
