"""The train settings whose values have structure: held-out metric names, ``early_stop``'s
mapping and the ``loggers`` list, checked with located errors like the flat settings in
ssmgraph.train.config (which calls :func:`check_settings` after its own checks)."""

from __future__ import annotations

from typing import Any

from ssmgraph.blueprint.yamlsafe import LDict, mark_of
from ssmgraph.errors import Collector, did_you_mean

SPLITS = ("test", "valid")
"""The held-out splits a metric may name (``valid_loss``): the task's fixed held-out sets."""
STATS = {"loss": "min", "bits": "min", "bits_per_byte": "min", "accuracy": "max"}
"""The held-out statistics a metric may name, and which direction is better."""
METRICS = tuple(f"{split}_{stat}" for split in SPLITS for stat in STATS)
LOGGER_NAMES = ["csv", "tensorboard", "wandb", "mlflow"]
"""The names ``loggers`` may list: the built-in ones and those added by ``register_logger``."""
EARLY_STOP_KEYS = ("metric", "patience", "mode")
MODES = ("min", "max")


def split_of(metric: str) -> str:
    """``valid_loss`` -> ``valid``."""
    return metric.split("_", 1)[0]


def stat_of(metric: str) -> str:
    """``valid_loss`` -> ``loss``."""
    return metric.split("_", 1)[1]


def mode_of(metric: str, mode: str | None = None) -> str:
    """``min`` or ``max``: the given mode, else the one the metric's statistic implies."""
    return mode or STATS[stat_of(metric)]


def check_settings(values: dict[str, Any], raw: LDict | None, errors: Collector) -> None:
    """Check the insides of ``early_stop`` and ``loggers``, and that ``ema`` is below 1."""

    def where(key: str) -> Any:
        return raw.mark_of(key) if raw is not None and key in raw else None

    if values.get("ema", 0.0) >= 1.0:
        errors.add("E112", f"ema: {values['ema']!r} must be below 1 (1 would never move)", where("ema"), "ema", "e.g. 0.999")
    loggers = values.get("loggers", [])
    if isinstance(loggers, list):
        for i, name in enumerate(loggers):
            mark = mark_of(raw.get("loggers") if raw is not None else None, i, where("loggers"))
            if name not in LOGGER_NAMES:
                errors.add(
                    "E112", f"loggers: unknown logger {name!r}", mark, f"loggers.{i}", did_you_mean(str(name), LOGGER_NAMES)
                )
            elif loggers.index(name) != i:
                errors.add("E112", f"loggers: {name!r} is listed twice", mark, f"loggers.{i}")
    stop = values.get("early_stop", {})
    if isinstance(stop, dict) and stop:
        key_mark = raw.key_mark("early_stop") if raw is not None and "early_stop" in raw else None
        _check_early_stop(stop, raw.get("early_stop") if raw is not None else None, key_mark, errors)


def _check_early_stop(stop: dict[str, Any], raw: Any, mark: Any, errors: Collector) -> None:
    example = "e.g. early_stop: {metric: valid_loss, patience: 3}"
    for key in stop:
        if key not in EARLY_STOP_KEYS:
            key_mark = raw.key_mark(key) if isinstance(raw, LDict) and key in raw else mark
            errors.add(
                "E110", f"early_stop: unknown key {key!r}", key_mark, f"early_stop.{key}", did_you_mean(str(key), EARLY_STOP_KEYS)
            )
    metric = stop.get("metric")
    if metric is None:
        errors.add("E111", "early_stop needs a 'metric'", mark, "early_stop.metric", example)
    elif metric not in METRICS:
        errors.add(
            "E112",
            f"early_stop.metric: {metric!r} is not a held-out metric",
            mark_of(raw, "metric", mark),
            "early_stop.metric",
            did_you_mean(str(metric), METRICS),
        )
    patience = stop.get("patience", 3)
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        errors.add(
            "E112",
            f"early_stop.patience: expected a whole number of evaluations >= 1, got {patience!r}",
            mark_of(raw, "patience", mark),
            "early_stop.patience",
            example,
        )
    if stop.get("mode") is not None and stop["mode"] not in MODES:
        errors.add(
            "E112",
            f"early_stop.mode: {stop['mode']!r} is not 'min' or 'max'",
            mark_of(raw, "mode", mark),
            "early_stop.mode",
            "leave it out for loss, bits (min) and accuracy (max)",
        )
