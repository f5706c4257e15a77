"""The math the blocks are built from: plain PyTorch functions on tensors, one module per job.

No CUDA extension and no pykeops, so everything runs on the CPU and under ``torch.compile``.
This layer imports nothing from the blocks or the layers above them. Plugins import these
functions through the public toolkit :mod:`ssmgraph.kernels`, not from here (the layout of
this package may change).

=====================  ====================================================================
module                 job
=====================  ====================================================================
``hippo``              HiPPO matrices (LegS, LegT, FouT), their NPLR form, the S4D
                       initialisations, the log-uniform Δ draw
``discretize``         ZOH and bilinear discretisation (diagonal and dense systems), the
                       softplus⁻¹ init of a selective Δ bias
``vandermonde``        the diagonal-SSM kernel Σ_n v_n a_n^l over blocks of positions
``dplr``               DPLR state matrices: dense form, S4's Cauchy/Woodbury kernel
``fftconv``            causal / bidirectional convolution through the FFT (length 2L)
``final_state``        right-padded sequences: lengths, the state after the last valid token
``scan``               the parallel (Blelloch) scan of x_t = a_t x_{t-1} + b_t and its loop
``selective_scan``     Mamba's selective scan (S6) with a fast custom backward
``linear_attention``   gated linear attention (GLA): the step and the stable chunked form
``delta_rule``         the (gated) delta rule: the step and the chunked WY (UT transform) form
``ssd``                Mamba-2's scan by state space duality: chunked masked matmuls, the
                       recurrence and one step
``gated_norm``         Mamba-2's gated RMSNorm over groups of channels
``linear``             ``F.linear`` / ``nn.Linear`` through oneDNN where that is faster
``softcap``            logit soft-capping and attention with capped scores (Gemma 2)
``precision``          state dtypes, the dtype SSM math runs in (at least fp32), the device
                       and dtype of a zero state, init math on the host
``causal_conv``        short causal depthwise convolution with a carried window of inputs
``mlstm``              xLSTM's mLSTM memory: stabilised step and chunked parallel form
``slstm``              xLSTM's sLSTM cell (exponential gating, stabiliser) and its loop
``hyena_filter``       Hyena's implicit-filter positional features and decay window
=====================  ====================================================================
"""
