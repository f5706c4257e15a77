"""The registry of built-in training tasks: each is registered once through the hook, its spec is
well formed, and options that do not fit together are refused.
"""

from __future__ import annotations

import pytest
from task_helpers import BUILTIN_TASK_PLUGINS, EXPECTED, all_specs

from ssmgraph.errors import SsmgraphError


# ---- registration ----------------------------------------------------------------------------------
def test_hook_lists_every_builtin_task_once():
    assert sorted(all_specs()) == sorted(EXPECTED)
    assert sorted(BUILTIN_TASK_PLUGINS) == sorted(
        (
            "ssmgraph.train.tasks.synthetic",
            "ssmgraph.train.tasks.digits",
            "ssmgraph.train.tasks.text",
            "ssmgraph.train.tasks.tokenized",
        )
    )


@pytest.mark.parametrize("name", EXPECTED)
def test_spec_is_well_formed(name):
    spec = all_specs()[name]
    assert spec.validate() == []
    assert spec.reference and spec.doc
    assert all(not p.required for p in spec.params), "every option has a default"
    for p in spec.params:
        assert p.check(p.default)[1] is None, (p.name, p.default)
    assert spec.to_json()["name"] == name


# ---- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("copying", {"seq_len": 10, "n_memorize": 5}, "too short"),
        ("selective_copying", {"seq_len": 10, "n_memorize": 6}, "too short"),
        ("mqar", {"n_pairs": 8, "n_queries": 9}, "n_queries"),
        ("mqar", {"n_pairs": 40, "vocab": 64}, "raise vocab"),
        ("mqar", {"seq_len": 40, "n_pairs": 16}, "too short"),
        ("listops", {"seq_len": 64, "min_len": 100}, "min_len"),
    ],
)
def test_options_that_do_not_fit_together_are_refused(name, options, match):
    spec = all_specs()[name]
    with pytest.raises(SsmgraphError, match=match):
        spec.factory(**{**spec.defaults(), **options})
