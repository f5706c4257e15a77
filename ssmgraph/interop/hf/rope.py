"""RoPE settings of Llama-layout configs <-> ``mix.attention``'s ``rope_*`` arguments.

transformers 5 writes ``rope_parameters`` (``rope_type``, ``rope_theta`` and the type's fields);
4.x writes ``rope_theta`` and, for a scaled RoPE, ``rope_scaling`` (``type`` or ``rope_type``).
``default``, ``linear``, ``llama3`` and ``yarn`` convert, with the frequencies of transformers'
``modeling_rope_utils.py``. ``dynamic`` is refused: transformers recomputes its frequencies from
the longest sequence the model object has run so far (module state), so one input gives
different logits depending on earlier calls, which no stateless model reproduces.
"""

from __future__ import annotations

import math
from typing import Any

from ssmgraph.interop.hf.checkpoint import HFConfig

CONVERTED = ("default", "linear", "llama3", "yarn")
_DYNAMIC_HELP = (
    "transformers rescales 'dynamic' RoPE from the longest sequence the model object has seen (state kept between "
    "calls), which ssmgraph cannot reproduce exactly; up to max_position_embeddings it equals plain RoPE: set "
    "rope_type to 'default' in config.json if you stay within that length"
)
_FIELDS = {  # rope_type -> its fields, as mix.attention arguments: (config key, argument, default)
    "linear": (("factor", "rope_factor", None),),
    "llama3": (
        ("factor", "rope_factor", None),
        ("original_max_position_embeddings", "rope_original_len", None),
        ("low_freq_factor", "rope_low_freq", None),
        ("high_freq_factor", "rope_high_freq", None),
    ),
    "yarn": (
        ("original_max_position_embeddings", "rope_original_len", None),
        ("factor", "rope_factor", None),
        ("beta_fast", "rope_beta_fast", 32.0),
        ("beta_slow", "rope_beta_slow", 1.0),
        ("truncate", "rope_truncate", True),
        ("attention_factor", "rope_attention_factor", None),
    ),
}


def read_rope(config: HFConfig, max_len: int, *, theta_key: str = "rope_theta", partial: bool = False) -> dict[str, Any]:
    """``mix.attention``'s RoPE arguments (``rope``, ``rope_base``, and a scaling's) from config.json;
    ``max_len`` is the model's max_position_embeddings (the default original length); ``theta_key``: the
    4.x field of the base; ``partial``: the caller reads ``partial_rotary_factor`` (else only 1 converts)."""
    field = "rope_parameters" if config.data.get("rope_parameters") is not None else "rope_scaling"
    params = config.value(field, dict, None) or {}
    nested = [k for k, v in params.items() if isinstance(v, dict)]
    if nested:
        raise config.fail(f"{field}.{nested[0]}", "per-layer RoPE settings are not supported", "give one RoPE for all layers")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "dynamic":
        raise config.fail(f"{field}.rope_type", "'dynamic' is not supported", _DYNAMIC_HELP)
    if kind not in CONVERTED:
        raise config.fail(f"{field}.rope_type", f"{kind!r} is not supported", f"rope_type {', '.join(CONVERTED)} convert")
    for where, holder in () if partial else ((f"{field}.partial_rotary_factor", params), ("partial_rotary_factor", config.data)):
        partial = holder.get("partial_rotary_factor")
        if partial not in (1, 1.0, None):
            raise config.fail(where, f"{partial!r} is not supported: mix.attention rotates every feature", "only 1.0 converts")
    theta = params.get("rope_theta", config.value(theta_key, float, 10000.0, minimum=1.0))
    args: dict[str, Any] = {"rope": True, "rope_base": _number(config, f"{field}.rope_theta", theta, 1.0)}
    if kind == "default":
        return args
    args["rope_scaling"] = kind
    for key, arg, default in _FIELDS[kind]:
        args[arg] = _field(config, field, key, params.get(key), default, kind, max_len, args)
    if kind == "llama3" and not 0 < args["rope_low_freq"] < args["rope_high_freq"]:
        raise config.fail(f"{field}.high_freq_factor", "must be above low_freq_factor, which must be above 0")
    if kind == "yarn" and args["rope_attention_factor"] is None:
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all:  # transformers: the ratio of the two YaRN magnitudes
            mscale, mscale_all = (_number(config, f"{field}.{k}", params[k], 0.0) for k in ("mscale", "mscale_all_dim"))
            ratio = _mscale(args["rope_factor"], mscale) / _mscale(args["rope_factor"], mscale_all)
            args["rope_attention_factor"] = _number(config, f"{field}.mscale", ratio, 0.0)
        else:
            del args["rope_attention_factor"]  # null: mix.attention's default, 0.1·ln(factor) + 1
    return args


def _field(
    config: HFConfig, field: str, key: str, value: Any, default: Any, kind: str, max_len: int, args: dict[str, Any]
) -> Any:
    """One field of a scaled RoPE, with transformers' defaults; ``args`` holds the fields read before it."""
    where = f"{field}.{key}"
    if key == "truncate":
        if not isinstance(value, (bool, type(None))):
            raise config.fail(where, f"expected true or false, got {value!r}")
        return True if value is None else value
    if key in ("beta_fast", "beta_slow"):
        value = value or default  # transformers: `beta_fast or 32`, `beta_slow or 1`
    if value is None and key == "original_max_position_embeddings":
        value = max_len  # transformers' standardize_rope_params
    if value is None and key == "factor" and kind == "yarn":
        value = max_len / args["rope_original_len"]  # transformers: the factor the two lengths imply
    if value is None:
        if key == "attention_factor":
            return None
        raise config.fail(where, f"missing; rope_type {kind!r} needs it")
    if key == "original_max_position_embeddings":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise config.fail(where, f"expected a whole number of positions, got {value!r}")
        return value
    return _number(config, where, value, 1.0 if key == "factor" else 0.0)


def rope_config(args: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``rope_parameters`` for ``mix.attention``'s arguments (only the scaling's fields)."""
    kind = "default" if args.get("rope_scaling", "none") == "none" else args["rope_scaling"]
    out: dict[str, Any] = {"rope_type": kind, "rope_theta": args["rope_base"]}
    for key, arg, _ in _FIELDS.get(kind, ()):
        if args.get(arg) is not None:
            out[key] = args[arg]
    return out


def rope_args(mix: dict[str, Any]) -> dict[str, Any]:
    """The RoPE arguments of a saved model's ``mix.attention`` node, as an import would write them."""
    args = {"rope": mix["rope"], "rope_base": mix["rope_base"]}
    kind = mix.get("rope_scaling", "none")
    if kind != "none":
        args["rope_scaling"] = kind
        args.update({arg: mix[arg] for _, arg, _ in _FIELDS[kind] if mix.get(arg) is not None})
    return args


def _number(config: HFConfig, field: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise config.fail(field, f"expected a number of at least {minimum:g}, got {value!r}")
    return float(value)


def _mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
