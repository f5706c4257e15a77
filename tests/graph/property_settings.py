"""Hypothesis settings shared by the compiler property tests in this folder
(test_shape_properties.py, test_mutation_properties.py): QUICK for the default run, MODELS for
the ``slow`` runs with many more examples. Imported by basename, like tests/registry/fake_plugins.py.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

QUICK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODELS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
