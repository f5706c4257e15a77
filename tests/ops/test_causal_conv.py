"""``ssmgraph.ops.causal_conv``: the short convolution and its window against a left-padded ``F.conv1d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmgraph.ops.causal_conv import causal_conv, conv_step, last_inputs, pad_mask, padded_inputs, step_window

F64 = torch.float64
B, C, K, L = 2, 3, 4, 9


def _reference(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PyTorch's depthwise convolution over u padded with K - 1 zeros on the left."""
    return F.conv1d(F.pad(u, (K - 1, 0)), weight, bias, groups=C)


def test_chunks_with_carried_windows_equal_one_pass():
    torch.manual_seed(0)
    u, weight, bias = torch.randn(B, C, L, dtype=F64), torch.randn(C, 1, K, dtype=F64), torch.randn(C, dtype=F64)
    full = _reference(u, weight, bias)
    assert torch.allclose(causal_conv(u, weight, bias, None), full)
    assert torch.allclose(F.conv1d(padded_inputs(u, None, K), weight, bias, groups=C), full)
    window, ys = None, []
    for part in u.split([2, 5, 2], dim=-1):  # a chunk shorter than the kernel included
        ys.append(F.conv1d(padded_inputs(part, window, K), weight, bias, groups=C))
        window = last_inputs(part, window, K)
    assert torch.allclose(torch.cat(ys, dim=-1), full)
    assert torch.equal(window, u[..., -K:])


def test_steps_equal_one_pass_and_lengths_pick_each_sequences_window():
    torch.manual_seed(1)
    u, weight, bias = torch.randn(B, C, L, dtype=F64), torch.randn(C, 1, K, dtype=F64), torch.randn(C, dtype=F64)
    window = torch.zeros(B, C, K, dtype=F64)
    ys = []
    for t in range(L):
        window = step_window(window, u[..., t])
        ys.append(conv_step(window, weight, bias))
    assert torch.allclose(torch.stack(ys, dim=-1), _reference(u, weight, bias))
    lengths = torch.tensor([L, 2])
    windows = last_inputs(u, None, K, lengths)
    assert torch.equal(windows[0], u[0, :, -K:])
    assert torch.equal(windows[1], torch.cat([torch.zeros(C, K - 2, dtype=F64), u[1, :, :2]], dim=-1))


def test_pad_mask_zeroes_padded_positions_only():
    x = torch.ones(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert pad_mask(x, None) is x
    assert torch.equal(pad_mask(x, mask).sum(dim=(1, 2)), torch.tensor([8.0, 12.0]))
