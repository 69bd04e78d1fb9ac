"""Experiment loggers beyond the files every run writes (metrics.jsonl, summary.json).

`logger=tensorboard` writes TensorBoard event files into the run folder: every per-epoch (or
per-round) number as a scalar, and the hyperparameters with the final metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlrun.config import LoggerConfig, store_schema


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class TensorBoardConfig(LoggerConfig):
    name: str = "tensorboard"
    subdir: str = "tensorboard"  # inside the run folder


LOGGERS = {"none": NoLoggerConfig, "tensorboard": TensorBoardConfig}


class NoLogger:
    def log(self, record: dict) -> None:
        pass

    def close(self, config: dict, summary: dict) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from dlrun.errors import UserError, install_hint

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logger: 'tensorboard' needs the tensorboard package (dlrun's tensorboard "
                f"extra). Install it with: {install_hint('tensorboard')}"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict) -> None:
        step = record.get("epoch", record.get("round"))
        for key, value in record.items():
            if key not in ("epoch", "round"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)

    def close(self, config: dict, summary: dict) -> None:
        hparams = {
            k: v for k, v in _flatten(config).items() if isinstance(v, (int, float, str, bool))
        }
        final = {
            f"hparam/{split}_{k}": v for split in ("val", "test") for k, v in summary[split].items()
        }
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.close()


def open_logger(cfg: LoggerConfig | None, run_dir: Path):
    """The configured logger (None: none, as on every rank but the first under torchrun)."""
    if cfg is not None and cfg.name == "tensorboard":
        return TensorBoardLogger(run_dir / cfg.subdir)
    return NoLogger()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def store_schemas() -> None:
    for name, schema in LOGGERS.items():
        store_schema("logger", name, schema)
