"""Blueprints given as Python data (``Blueprint.from_dict``, ``ssmgraph.build(mapping)``): the
same blueprint as the YAML they would dump to, and errors that name the caller's label and
the key path of the value, since a mapping has no lines."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssmgraph
from ssmgraph.blueprint import Blueprint, builtin_blueprints, load_blueprint
from ssmgraph.blueprint.keypaths import KeyMark
from ssmgraph.blueprint.yamlsafe import dump_yaml, load_yaml, plain
from ssmgraph.errors import BlueprintError, Diagnostic
from ssmgraph.graph.compile import compile_blueprint

SHIPPED = sorted(builtin_blueprints())
SOURCE = "<test dict>"


def small_lm() -> dict[str, Any]:
    """Expressions, a fragment, a repeat stack with an ``at:`` override, a tie and a tap."""
    return {
        "ssmgraph": 1,
        "name": "small_lm",
        "params": {"vocab": 20, "d_model": 16, "layers": 3, "heads": 2},
        "inputs": {"tokens": {"dtype": "int64", "shape": ("batch", "seq")}},
        "nodes": {
            "embed": {"block": "embed.token", "in": "tokens", "args": {"vocab": "$vocab", "dim": "$d_model"}},
            "blocks": {
                "repeat": "$layers",
                "in": "embed",
                "body": {"use": "fragments/prenorm.yaml", "args": {"mixer": "mix.attention", "mixer_args": {"heads": "$heads"}}},
                "at": {-1: {"args": {"mixer": "mix.lstm", "mixer_args": {}}}},
            },
            "norm_f": {"block": "norm.layer", "in": "blocks"},
            "head": {"block": "head.lm", "in": "norm_f", "args": {"vocab": "$vocab"}, "tie": {"weight": "embed.weight"}},
        },
        "outputs": {"logits": "head"},
        "taps": {"resid": {"at": "blocks.*.out"}},
    }


def diagnostics(mapping: dict[str, Any], **params: Any) -> list[Diagnostic]:
    """The diagnostics of resolving and compiling ``mapping`` (labelled SOURCE)."""
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(Blueprint.from_dict(mapping, source=SOURCE, overrides=params))
    return info.value.diagnostics


def test_a_mapping_builds_the_model_its_yaml_builds() -> None:
    from_yaml = load_blueprint("small_lm.yaml", text=dump_yaml(small_lm()))
    from_dict = Blueprint.from_dict(small_lm(), source=SOURCE)
    assert from_dict.to_dict() == from_yaml.to_dict()
    models = []
    for blueprint in (from_yaml, from_dict):
        torch.manual_seed(0)
        models.append(compile_blueprint(blueprint).eval())
    a, b = models
    assert a.generated_source == b.generated_source
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    tokens = torch.randint(0, 20, (2, 7))
    torch.testing.assert_close(a(tokens), b(tokens), rtol=0, atol=0)


def test_build_and_load_blueprint_take_a_mapping() -> None:
    model = ssmgraph.build(small_lm(), d_model=8, layers=2)
    assert model.embed.weight.shape == (20, 8) and [name for name, _ in model.blocks.named_children()] == ["0", "1"]
    assert load_blueprint(small_lm()).name == "small_lm"


def test_name_falls_back_to_the_argument_and_source_is_kept() -> None:
    nameless = {k: v for k, v in small_lm().items() if k != "name"}
    assert Blueprint.from_dict(nameless).name == "blueprint"
    assert Blueprint.from_dict(nameless, name="mine", source=SOURCE).name == "mine"
    assert Blueprint.from_dict(small_lm(), name="mine").name == "small_lm"  # the mapping's own name wins, as a file's does
    assert Blueprint.from_dict(small_lm(), source=SOURCE).source == SOURCE


def test_a_bad_value_names_its_key_path_and_the_source() -> None:
    bad = small_lm()
    bad["nodes"]["blocks"]["repeat"] = "three"
    [found] = diagnostics(bad)
    assert found.code == "E112"
    assert isinstance(found.mark, KeyMark) and found.mark.key == "nodes.blocks.repeat"
    assert (
        found.render().splitlines()[0]
        == f"{SOURCE}:nodes.blocks.repeat: error[E112]: nodes.blocks.repeat: repeat must be int, got str 'three'"
    )


def test_a_bad_block_argument_names_its_key_path_after_compiling() -> None:
    bad = small_lm()
    bad["nodes"]["embed"]["args"]["dim"] = "wide"
    [found] = diagnostics(bad)
    assert found.code == "E203"
    assert found.render().startswith(f"{SOURCE}:nodes.embed.args.dim: error[E203]: embed.args.dim: ")


def test_an_override_that_does_not_fit_names_the_params_entry() -> None:
    [found] = diagnostics(small_lm(), layers=True)
    assert (found.code, str(found.mark)) == ("E112", f"{SOURCE}:params.layers")


@pytest.mark.parametrize(
    ("where", "value", "code", "message"),
    [
        ("p", Path("x"), "E112", "PosixPath('x') is not plain data"),
        ("p", {1, 2}, "E112", "{1, 2} is not plain data"),
        ("p", 2**70, "E104", "integer 1180591620717411303424 does not fit in 64 bits"),
        ("p", {(1, 2): 3}, "E103", "mapping key (1, 2) is not a string, number, boolean or None"),
    ],
)
def test_values_yaml_cannot_hold_are_refused(where: str, value: Any, code: str, message: str) -> None:
    mapping = small_lm()
    mapping["params"][where] = value
    [found] = diagnostics(mapping)
    assert (found.code, found.message) == (code, message)
    assert str(found.mark).startswith(f"{SOURCE}:params.p")


def test_a_mapping_that_holds_itself_is_e103_once() -> None:
    mapping = small_lm()
    mapping["params"]["loop"] = mapping["params"]
    mapping["params"]["twice"] = mapping["params"]
    [found] = diagnostics(mapping)
    assert found.code == "E103" and "nested deeper than 64 levels" in found.message


def test_a_non_mapping_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="takes a mapping, got list"):
        Blueprint.from_dict([1, 2])  # type: ignore[arg-type]


def test_scalar_subclasses_become_plain_values() -> None:
    import enum

    class Width(enum.IntEnum):
        SMALL = 8

    mapping = small_lm()
    mapping["params"]["d_model"] = Width.SMALL
    assert type(Blueprint.from_dict(mapping).params["d_model"]) is int


# ---- properties -----------------------------------------------------------------------------------

PROPERTIES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTIES
@given(name=st.sampled_from(SHIPPED))
def test_to_dict_then_from_dict_round_trips(name: str) -> None:
    blueprint = load_blueprint(name)
    again = Blueprint.from_dict(blueprint.to_dict(), source=SOURCE)
    assert again.to_dict() == blueprint.to_dict()
    assert again.params == blueprint.params


JUNK = st.sampled_from(
    [None, 0, -1, 2, 1.5, True, "", "x", "$nope", "$1/0", "$$a", "self", "_x", "mix.lstm", "0-9", [], ["x"], {}, {"x": 1}, {1: 2}]
)


@PROPERTIES
@given(name=st.sampled_from(SHIPPED), data=st.data())
def test_a_mapping_and_its_yaml_give_the_same_blueprint_or_the_same_errors(name: str, data: st.DataObject) -> None:
    """Mutate a shipped blueprint's document; resolving it as a mapping and as the YAML it
    dumps to agree (errors by code, message and key path), and mapping errors are key-marked."""
    doc = plain(load_yaml(builtin_blueprints()[name].read_text(encoding="utf-8"), f"{name}.yaml"))
    for _ in range(data.draw(st.integers(1, 3))):
        places = list(_places(doc))
        parent, key = data.draw(st.sampled_from(places))
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = copy.deepcopy(data.draw(JUNK))

    def outcome(load: Any) -> Any:
        try:
            return load().to_dict(), []
        except BlueprintError as error:
            return None, error.diagnostics

    from_yaml, yaml_errors = outcome(lambda: load_blueprint(f"{name}.yaml", text=dump_yaml(doc)))
    from_dict, dict_errors = outcome(lambda: Blueprint.from_dict(doc, name=name, source=SOURCE))
    assert from_dict == from_yaml
    assert sorted((d.code, d.message, d.path) for d in dict_errors) == sorted((d.code, d.message, d.path) for d in yaml_errors)
    for d in dict_errors:
        outermost = d.mark.via[0] if d.mark is not None and d.mark.via else d.mark
        assert isinstance(outermost, KeyMark) and outermost.file == SOURCE, d.render()


def _places(value: Any) -> Any:
    """(container, key) of every value inside ``value``."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield value, key
        yield from _places(item)
