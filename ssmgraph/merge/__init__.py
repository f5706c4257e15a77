"""Merging models: recipes, weight-space methods, permutation alignment, stitching, mutual training
and superposition (docs/merging.md).

A merge, in the order it runs: :mod:`.recipe` (the YAML recipe, checked) → :mod:`.run` (load the
models, :mod:`.compatibility` classes them, :mod:`.align` permutes them for ``permute:``) → a
method's ``run(context)`` with a :mod:`.context` → :mod:`.report`. The methods: :mod:`.weight_methods`
(over :mod:`.weights`), :mod:`.mutual`, :mod:`.stitch`, :mod:`.superpose`; registered in
:mod:`.builtin`. Their tools: :mod:`.permute` (permutation symmetries), :mod:`.compose` (joint
blueprints), :mod:`.maps` (activation-space maps), :mod:`.similarity` (CKA), :mod:`.bspline`,
:mod:`.plots`, :mod:`.models` (a loaded model and its blueprint); :mod:`.compare` is ``ssmgraph compare``.
"""
