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
``discretize``         ZOH and bilinear discretisation (diagonal and dense systems)
``vandermonde``        the diagonal-SSM kernel Σ_n v_n a_n^l over blocks of positions
``dplr``               DPLR state matrices: dense form, S4's Cauchy/Woodbury kernel
``fftconv``            causal / bidirectional convolution through the FFT (length 2L)
``final_state``        right-padded sequences: lengths, the state after the last valid token
``scan``               the parallel (Blelloch) scan of x_t = a_t x_{t-1} + b_t and its loop
``selective_scan``     Mamba's selective scan (S6) with a fast custom backward
``linear``             ``F.linear`` / ``nn.Linear`` through oneDNN where that is faster
``precision``          state dtypes, the dtype SSM math runs in, init math on the host
=====================  ====================================================================
"""
