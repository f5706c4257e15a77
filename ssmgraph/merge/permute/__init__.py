"""Permutation symmetries of models: find them, apply them, align one model onto another.

- :mod:`~ssmgraph.graph.perm_spaces`: the kinds of spaces, and what one block declares (below merge: the
  conformance kit checks declarations with it too);
- :mod:`~ssmgraph.merge.permute.model_spaces`: every space of a compiled model, the residual stream included;
- :mod:`~ssmgraph.graph.perm_apply`: permuting a state dict along spaces;
- :mod:`~ssmgraph.merge.permute.matching`: weight and activation matching (Git Re-Basin).
"""
