"""Where a run's logged records go: ``metrics.jsonl`` always, and the trackers a stage names
in ``loggers`` (``tensorboard``: event files in ``<out_dir>/tensorboard/``; ``wandb``,
``mlflow``: a run of their own, where installed).

The trainer calls :meth:`RunLoggers.log` once per logged record and :meth:`RunLoggers.close`
at its end. Every number of a record (each objective's loss, the learning rate, the
temperature, the throughput, the skipped steps) goes to each tracker at the record's step.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.errors import ConfigError
from ..core.extras import EXTRAS, needs
from ..core.fileio import append_json_lines

# a name in ``loggers`` -> the extra that installs it (None: always there)
LOGGERS = {"jsonl": None, "tensorboard": "track", "wandb": "wandb", "mlflow": "mlflow"}


def check_loggers(names, key: str = "loggers") -> None:
    """Known names only, and each one's package installed: a ConfigError of one line otherwise."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"{key}: unknown logger {name!r} (known: {', '.join(LOGGERS)})")
        extra = LOGGERS[name]
        if extra is not None and importlib.util.find_spec(EXTRAS[extra][0][0]) is None:
            raise ConfigError(f"{key}: {name} is not installed: pip install 'mvptr[{extra}]'")


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of ``record`` by name (nested dicts as ``a/b``), without its step."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class _Jsonl:
    def __init__(self, out_dir: Path, run: str):
        self.path = out_dir / "metrics.jsonl"

    def log(self, record: dict, step: int) -> None:
        append_json_lines(self.path, [record])  # a crash leaves whole lines

    def close(self) -> None:
        pass


class _TensorBoard:
    def __init__(self, out_dir: Path, run: str):
        with needs("track"):
            from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, record: dict, step: int) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out_dir: Path, run: str):
        with needs("wandb"):
            import wandb
        self.run = wandb.init(dir=str(out_dir), name=run, reinit=True)

    def log(self, record: dict, step: int) -> None:
        self.run.log(scalars(record), step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, out_dir: Path, run: str):
        with needs("mlflow"):
            import mlflow
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run)

    def log(self, record: dict, step: int) -> None:
        self.mlflow.log_metrics(scalars(record), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


KINDS = {"jsonl": _Jsonl, "tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class RunLoggers:
    """The loggers of one run in ``out_dir``: ``metrics.jsonl`` (unless ``jsonl`` is False: a
    record kept elsewhere) and those ``names`` asks for. ``main``: only the main process writes."""

    def __init__(self, names, out_dir: str | Path, run: str, main: bool = True, jsonl: bool = True):
        check_loggers(names)
        wanted = (["jsonl"] if jsonl else []) + [n for n in dict.fromkeys(names) if n != "jsonl"]
        self.loggers = [KINDS[n](Path(out_dir), run) for n in wanted] if main else []

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record, int(record.get("step", 0)))

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_figures(names, out_dir: str | Path, run: str, figures: dict, step: int, prefix: str = "eval/") -> None:
    """An evaluation's figures (nested dicts flattened) to the trackers ``names`` asks for, at
    ``step``; its JSON file is the workflow's."""
    with RunLoggers(names, out_dir, run, jsonl=False) as loggers:
        loggers.log({"step": step, **scalars(figures, prefix)})
