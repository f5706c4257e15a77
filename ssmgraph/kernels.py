"""The public state-space toolkit for block plugins: the one module they import SSM pieces from.

It gathers, from two layers whose internal layout may change, what a plugin author needs:

- the math, from ``ssmgraph.ops``: HiPPO matrices and their normal-plus-low-rank forms,
  diagonal initialisations, discretisations, kernels (Vandermonde for diagonal SSMs,
  Cauchy/Woodbury for DPLR), FFT convolution, the parallel, sequential and selective scans,
  Mamba-2's chunked SSD scan and its gated RMSNorm,
  state dtypes, and ``Linear`` / ``linear``: ``nn.Linear`` / ``F.linear`` with the built-in
  blocks' faster fp32 CPU path (``onednn_linear(False)`` switches it off for a block of code);
- the SSM modules and spec pieces, from ``ssmgraph.blocks``: the S4/S4D cores, their
  reference block tail and its factory, the SSM parameters every SSM block declares
  (``ssm_params``) and their checks, and the helpers that give SSM tensors their own
  learning rate (read by :func:`ssmgraph.param_groups`).
"""

from ssmgraph.blocks.conv_ssm import ConvSSMBlock, block_params, conv_ssm_factory, make_activation
from ssmgraph.blocks.optim_hints import mark_optim
from ssmgraph.blocks.s4 import DPLRSSM
from ssmgraph.blocks.s4d import DiagSSM
from ssmgraph.blocks.ssm_params import SSMParams, check_ssm_args, register_ssm_param, ssm_params
from ssmgraph.ops.discretize import bilinear_dense, discretize_diag
from ssmgraph.ops.dplr import conj_full, dplr_dense, dplr_kernel
from ssmgraph.ops.fftconv import fft_conv
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.gated_norm import gated_rms_norm
from ssmgraph.ops.hippo import MEASURES, diag_init, hippo, log_uniform, nplr
from ssmgraph.ops.linear import Linear, linear, onednn_linear
from ssmgraph.ops.precision import complex_dtype, host_init, ssm_dtype
from ssmgraph.ops.scan import parallel_scan, sequential_scan
from ssmgraph.ops.selective_scan import selective_scan, selective_scan_ref
from ssmgraph.ops.ssd import ssd_chunked, ssd_recurrent, ssd_step
from ssmgraph.ops.vandermonde import vandermonde

__all__ = [
    "DPLRSSM",
    "MEASURES",
    "ConvSSMBlock",
    "DiagSSM",
    "Linear",
    "SSMParams",
    "bilinear_dense",
    "block_params",
    "check_ssm_args",
    "complex_dtype",
    "conj_full",
    "conv_ssm_factory",
    "diag_init",
    "discretize_diag",
    "dplr_dense",
    "dplr_kernel",
    "fft_conv",
    "gated_rms_norm",
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
    "selective_scan",
    "selective_scan_ref",
    "sequential_scan",
    "ssd_chunked",
    "ssd_recurrent",
    "ssd_step",
    "ssm_dtype",
    "ssm_params",
    "vandermonde",
]
