"""Metric loggers besides RUN/metrics.jsonl (which is always written: resume and plot read it).

``loggers: [csv, tensorboard, wandb, mlflow]`` in the train config picks them. A logger is
anything with ``log(record)`` and ``close()``; a record is what metrics.jsonl holds: ``step``,
``split`` (``train``, ``eval``, ``valid``) and numbers. A third-party logger is registered with
:func:`register_logger` under a new name::

    register_logger("mine", lambda run_dir, config, step: MyLogger(run_dir))

(the factory gets the run folder, the TrainConfig and the step the run starts from: 0, or the
checkpoint's step on ``--resume``, past which earlier records are dropped).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ssmgraph.folders import write_text_atomic
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.settings import LOGGER_NAMES

CSV_FILE = "metrics.csv"


class Logger(Protocol):
    def log(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


LoggerFactory = Callable[[Path, TrainConfig, int], Logger]
FACTORIES: dict[str, LoggerFactory] = {}


def register_logger(name: str, factory: LoggerFactory) -> None:
    """Make ``loggers: [name]`` build a logger with ``factory(run_dir, config, start_step)``."""
    FACTORIES[name] = factory
    if name not in LOGGER_NAMES:
        LOGGER_NAMES.append(name)


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The package each built-in logger imports (also its pip name)."""


def check_loggers(names: list[str]) -> None:
    """Every named logger is registered and its package importable (checked before a run starts)."""
    missing = [name for name in names if name not in FACTORIES]
    if missing:
        raise TrainingError(f"loggers: no logger named {missing[0]!r}; known: {', '.join(sorted(FACTORIES))}")
    for name in names:
        if name in PACKAGES:
            _require(PACKAGES[name], PACKAGES[name], name)


def open_loggers(run_dir: Path, config: TrainConfig, step: int) -> list[Logger]:
    """The config's loggers (checked with :func:`check_loggers` when the trainer was built)."""
    return [FACTORIES[name](run_dir, config, step) for name in config.loggers]


def _require(module: str, package: str, name: str) -> Any:
    """Import an optional package, or say how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise TrainingError(
            f"loggers: {name!r} needs the {package} package: `pip install {package}` (or drop {name!r} from loggers)"
        ) from None


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """``{"split/key": value}`` for the numbers of a record other than its step."""
    return {
        f"{record['split']}/{key}": float(value)
        for key, value in record.items()
        if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class CsvLogger:
    """RUN/metrics.csv: one row per record, a column per key seen so far (the header grows by
    rewriting the file, atomically; on resume, rows past the starting step are dropped)."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int):
        self.path = run_dir / CSV_FILE
        self.rows: list[dict[str, str]] = []
        if step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                self.rows = [row for row in csv.DictReader(handle) if _step(row) is not None and _step(row) <= step]
        self.columns: list[str] = list(dict.fromkeys(key for row in self.rows for key in row))
        self._rewrite()

    def log(self, record: Mapping[str, Any]) -> None:
        row = {key: str(value) for key, value in record.items()}
        self.rows.append(row)
        if set(row) <= set(self.columns):
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, self.columns).writerow(row)
            return
        self.columns += [key for key in row if key not in self.columns]
        self._rewrite()

    def _rewrite(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns)
        if self.columns:
            writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())

    def close(self) -> None:
        pass


def _step(row: Mapping[str, str]) -> int | None:
    value = row.get("step") or ""
    return int(value) if value.isdigit() else None


class TensorBoardLogger:
    """RUN/tensorboard/ event files (torch's SummaryWriter; needs the tensorboard package)."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def log(self, record: Mapping[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run named after the run folder, its files under RUN/wandb/. The project
    and mode come from wandb's own settings (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ...)."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ssmgraph"),
            name=run_dir.name,
            dir=str(run_dir),
            config=config.to_dict(),
            reinit="create_new",
        )

    def log(self, record: Mapping[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run named after the run folder, the config as its parameters. Where it goes is
    MLflow's own setting (``MLFLOW_TRACKING_URI``; ``MLFLOW_EXPERIMENT_NAME``)."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int):
        import mlflow

        self.mlflow = mlflow
        self.run = self.mlflow.start_run(run_name=run_dir.name)
        self.mlflow.log_params({key: str(value) for key, value in config.to_dict().items()})

    def log(self, record: Mapping[str, Any]) -> None:
        metrics = {key.replace("/", "_"): value for key, value in scalars(record).items()}
        self.mlflow.log_metrics(metrics, step=int(record["step"]))

    def close(self) -> None:
        self.mlflow.end_run()


for _name, _factory in (("csv", CsvLogger), ("tensorboard", TensorBoardLogger), ("wandb", WandbLogger), ("mlflow", MlflowLogger)):
    register_logger(_name, _factory)
