"""Built-in blocks. Each block module is a plugin: it implements ``ssmgraph_blocks()``.

Three modules hold what several blocks share instead: ``ssm_params`` (the SSM parameters every
SSM block declares, their checks and registration), ``conv_ssm`` (the S4/S4D block tail around a
convolutional SSM core) and ``optim_hints`` (per-parameter optimizer hints). The math the
blocks compute with is in :mod:`ssmgraph.ops`.

The contract every block follows (ports, shape rules, the mixer state/step protocol,
optimizer hints, testing expectations) is in docs/plugins.md ("The block contract").
"""
