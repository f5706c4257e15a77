"""The public state-space toolkit for block plugins.

Plugins import SSM building blocks from here, never from ``ssmgraph.blocks.*`` (whose
layout may change): HiPPO matrices and their normal-plus-low-rank forms, discretisations,
kernels (Vandermonde for diagonal SSMs, Cauchy/Woodbury for DPLR), FFT convolution, scans,
the S4/S4D SSM cores and their reference block tail, the parameter helpers that give
SSM tensors their own learning rate (read by :func:`ssmgraph.param_groups`), and ``Linear`` /
``linear``: ``nn.Linear`` / ``F.linear`` with the built-in blocks' faster fp32 CPU path
(``onednn_linear(False)`` switches it off for a block of code).
"""

from ssmgraph.blocks._optim import mark_optim
from ssmgraph.blocks.linear import Linear, linear, onednn_linear
from ssmgraph.blocks.s4 import DPLRSSM
from ssmgraph.blocks.s4d import ConvSSMBlock, DiagSSM, block_params, check_ssm_args, make_activation, ssm_params
from ssmgraph.blocks.ssm_kernels import (
    MEASURES,
    bilinear_dense,
    complex_dtype,
    conj_full,
    diag_init,
    discretize_diag,
    dplr_dense,
    dplr_kernel,
    fft_conv,
    hippo,
    host_init,
    log_uniform,
    mask_lengths,
    nplr,
    parallel_scan,
    register_ssm_param,
    sequential_scan,
    ssm_dtype,
    vandermonde,
)

__all__ = [
    "DPLRSSM",
    "MEASURES",
    "ConvSSMBlock",
    "DiagSSM",
    "Linear",
    "bilinear_dense",
    "block_params",
    "check_ssm_args",
    "complex_dtype",
    "conj_full",
    "diag_init",
    "discretize_diag",
    "dplr_dense",
    "dplr_kernel",
    "fft_conv",
    "hippo",
    "host_init",
    "linear",
    "log_uniform",
    "make_activation",
    "mark_optim",
    "mask_lengths",
    "nplr",
    "onednn_linear",
    "parallel_scan",
    "register_ssm_param",
    "sequential_scan",
    "ssm_dtype",
    "ssm_params",
    "vandermonde",
]
