"""Merging models: recipes, weight-space methods, permutation alignment, stitching, mutual training."""
