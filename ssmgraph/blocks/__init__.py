"""Built-in blocks. Each module is a plugin: it implements ``ssmgraph_blocks()``.

The contract every block follows (ports, shape rules, the mixer state/step protocol,
optimizer hints, testing expectations) is in docs/plugins.md ("The block contract").
"""
