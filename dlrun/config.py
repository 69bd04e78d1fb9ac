"""Config schemas: the types, defaults and allowed values of every field.

Each config group has a base dataclass here; each option (a model, an optimizer, a dataset)
subclasses it in its own module and is stored in Hydra's ConfigStore as `<group>/<name>_schema`,
which the option's YAML names in its defaults list. Hydra then rejects a misspelled key or a
wrong type by itself; the ranges and choices declared with `setting(...)` are checked by
`dlrun.validate`, all at once, before any work starts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import II, MISSING

ACTIVATIONS = ("gelu", "leaky_relu", "relu", "sigmoid", "tanh")
SEED = {"lo": 0, "hi": 2**32 - 1}  # what numpy's and scikit-learn's random states take


@dataclass(frozen=True)
class Rule:
    """What a numeric field or a choice field may hold."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return False
        return True

    def interval(self) -> str:
        lo = "-inf" if self.lo is None else _num(self.lo)
        hi = "inf" if self.hi is None else _num(self.hi)
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field with a default and the `Rule` its values must satisfy."""
    meta = {"rule": Rule(**rule)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Base schemas of the groups. Options subclass these (dlrun/models, dlrun/data, dlrun/optim.py).


@dataclass
class ModelConfig:
    name: str = MISSING
    # transfer learning (dlrun.transfer): start from a run folder's best.pt or a checkpoint
    # file; init_part takes one part of it (an autoencoder's `encoder`, chosen by itself)
    init_from: Optional[str] = None
    init_part: Optional[str] = None


ALL_ROWS = -1  # data.cv.fold of the refit: every row outside the test split trains


@dataclass
class CVConfig:
    """Cross-validation (dlrun.crossval): the non-test rows in `folds` folds, `repeats` times
    with new folds; each fold trains once on the others and is scored as its validation part."""

    folds: Optional[int] = setting(None, lo=2)  # null: one split, no cross-validation
    repeats: int = setting(1, lo=1)  # new seeded folds each repeat (5x2 = folds 2, repeats 5)
    # then one model trained on every non-test row (the folds' median best epoch or round),
    # scored on the test split once
    refit: bool = True
    # a table's column of groups (a patient, a site): a group's rows stay in one fold, and in one
    # of train / val / test; null: rows are independent
    group: Optional[str] = None
    # rows in time order (as the data gives them): the test split is the last rows, and each
    # fold trains on the rows before its validation block (scikit-learn's TimeSeriesSplit)
    time: bool = False
    # which fold a fold's own run trains (0 .. folds x repeats - 1), set by the run that
    # cross-validates; null: every fold (a run of its own: data.cv.fold=3 trains that one);
    # ALL_ROWS (-1): the refit's, every non-test row trains and there is no validation part
    fold: Optional[int] = setting(None, lo=ALL_ROWS)
    # the refit's epochs of a network (the folds' median best epoch), set by the run that
    # cross-validates: the refit follows trainer.max_epochs' schedules and stops after these
    epochs: Optional[int] = setting(None, lo=1)

    def problems(self) -> list[str]:
        if self.folds is None:
            for key, unset in (
                ("fold", self.fold is None),
                ("epochs", self.epochs is None),
                ("repeats", self.repeats == 1),
                ("group", self.group is None),
                ("time", not self.time),
            ):
                if not unset:
                    return [f"data.cv.{key} needs data.cv.folds (the number of folds, at least 2)."]
            return []
        if self.time and self.group is not None:
            return [
                "data.cv.time and data.cv.group cannot be used together: time-ordered folds keep "
                "the rows' order, grouped folds keep each group whole. Choose one."
            ]
        if self.time and self.repeats > 1:
            return [
                f"data.cv.repeats={self.repeats}: time-ordered folds are the same every repeat "
                "(they follow the rows' order). Use data.cv.repeats=1 with data.cv.time=true."
            ]
        total = self.folds * self.repeats
        if self.fold is not None and self.fold >= total:
            return [
                f"data.cv.fold must be below data.cv.folds x data.cv.repeats ({total}). "
                f"Got {self.fold}."
            ]
        return []


@dataclass
class DataConfig:
    name: str = MISSING
    test_split: float = setting(0.2, lo=0, hi=1, lo_open=True, hi_open=True)
    val_split: float = setting(0.1, lo=0, hi=1, lo_open=True, hi_open=True)
    split_seed: int = setting(II("seed"), **SEED)  # the run's seed unless set on its own
    normalize: bool = True  # statistics from the training split only
    as_sequence: bool = False  # a table's F features read as F steps of one value (sequence models)
    # only these classes (names or indices), renumbered in the order given; null: all
    keep_classes: Optional[list[Any]] = None
    # only this many training samples per class (seeded, after the split: validation and test
    # keep theirs); null: all. For few-label experiments.
    train_per_class: Optional[int] = setting(None, lo=1)
    task: Optional[str] = setting(
        None, choices=("classification", "regression")
    )  # null: the data's
    cv: CVConfig = field(default_factory=CVConfig)


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = setting(1e-3, lo=0, lo_open=True)
    weight_decay: float = setting(0.0, lo=0)
    # Per-layer learning rates (dlrun.params): the head learns at lr * head_lr_mult, the k-th
    # layer below it at lr * layer_decay**k (null: every layer at lr).
    head_lr_mult: float = setting(1.0, lo=0, lo_open=True)
    layer_decay: Optional[float] = setting(None, lo=0, hi=1, lo_open=True)


@dataclass
class SchedConfig:
    name: str = MISSING


@dataclass
class LoggerConfig:
    name: str = MISSING
    also: list[str] = field(default_factory=list)  # other loggers beside it, with their defaults

    def problems(self) -> list[str]:
        from dlrun.loggers import logger_problems

        return logger_problems(self)


@dataclass
class ClipConfig:
    max_norm: Optional[float] = setting(None, lo=0, lo_open=True)  # clip the global grad norm
    value: Optional[float] = setting(None, lo=0, lo_open=True)  # clip each grad to [-value, value]


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"  # also picks checkpoints/best.pt
    mode: str = setting("auto", choices=("auto", "min", "max"))
    patience: Optional[int] = setting(10, lo=1)  # epochs without improvement; null turns it off
    min_delta: float = setting(0.0, lo=0)


@dataclass
class TrainerConfig:
    max_epochs: int = setting(30, lo=1)
    batch_size: int = setting(32, lo=1)
    clip: ClipConfig = field(default_factory=ClipConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    devices: int = setting(1, lo=1)  # >1: DistributedDataParallel over that many processes
    precision: str = setting("32", choices=("32", "bf16", "16"))
    # auto: by task (cross_entropy for classes, mse for targets and autoencoders; the vae: elbo)
    loss: str = setting("auto", choices=("auto", "cross_entropy", "mse", "l1", "elbo"))
    resume: Optional[str] = None  # a run folder or checkpoint to continue, or auto (the latest)
    diagnostics: bool = True  # training-health signals per epoch and findings (dlrun.health)
    # CUDA speed-ups (ignored on other devices). cuda_graphs: capture each whole training step
    # (forward, backward, clipping, optimizer) as a CUDA graph and replay it; auto: wherever that
    # is safe (the log says why not where it is not).
    cuda_graphs: str = setting("auto", choices=("auto", "on", "off"))
    compile: str = setting("off", choices=("off", "default", "reduce-overhead", "max-autotune"))
    channels_last: str = setting("auto", choices=("auto", "on", "off"))  # auto: with bf16/16
    # Where training batches come from: device (the whole training split copied to the device
    # once), stream (a DataLoader with worker processes and pinned memory feeds each batch from
    # host memory), auto (stream only when the split would take over half the free GPU memory)
    data_placement: str = setting("auto", choices=("auto", "device", "stream"))
    workers: int = setting(2, lo=0)  # DataLoader worker processes when streaming
    # A network on a table: how much the validation score drops when one feature's values are
    # shuffled (scikit-learn's permutation_importance, 5 repeats), drawn after training
    permutation_importance: bool = False
    # Classes weighted in the training loss (networks) or as sample weights (estimators):
    # balanced (n / (classes x the class's count), as scikit-learn's), {class: weight} (by class
    # name or index; the others 1), or null (every class 1)
    class_weight: Any = None
    seed: int = setting(II("seed"), **SEED)  # weights, dropout and batch order
    # Transfer learning (dlrun.params): parameters to freeze (name patterns, or body: all but
    # the head), whether frozen batch norms keep their statistics (eval) or update them
    # (train), and the epoch from which the frozen parameters train too (null: never).
    freeze: Any = field(default_factory=list)
    freeze_bn: str = setting("eval", choices=("eval", "train"))
    unfreeze_at_epoch: Optional[int] = setting(None, lo=2)

    def problems(self) -> list[str]:
        """Checks beyond single fields (called by dlrun.validate)."""
        freeze = self.freeze
        if not (
            isinstance(freeze, str)
            or (isinstance(freeze, list) and all(isinstance(p, str) for p in freeze))
        ):
            return [
                "trainer.freeze must be a list of parameter-name patterns (or body). "
                f"Got {freeze!r}."
            ]
        problems = []
        weight = self.class_weight
        if not (
            weight is None
            or weight == "balanced"
            or (
                isinstance(weight, dict)
                and weight
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                    for v in weight.values()
                )
            )
        ):
            problems.append(
                "trainer.class_weight must be balanced, null, or {class: weight} with weights "
                f">= 0 (e.g. '{{1: 5.0}}'). Got {weight!r}."
            )
        at = self.unfreeze_at_epoch
        if at is None:
            return problems
        if not freeze:
            problems.append(
                f"trainer.unfreeze_at_epoch={at} needs trainer.freeze: nothing is frozen."
            )
        if isinstance(at, int) and at > self.max_epochs:
            problems.append(
                f"trainer.unfreeze_at_epoch must be at most trainer.max_epochs ({self.max_epochs})."
                f" Got {at}."
            )
        if self.devices > 1:
            problems.append(
                "trainer.unfreeze_at_epoch cannot be used with trainer.devices > 1: "
                "DistributedDataParallel fixes the trained parameters when it starts. Use "
                "trainer.devices=1, or freeze without unfreezing."
            )
        return problems


@dataclass
class TrainConfig:
    """The primary config (`configs/train.yaml`)."""

    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    sched: SchedConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = setting(42, **SEED)
    task_name: str = "train"


def store_base_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)


def store_schema(group: str, name: str, schema: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name=f"{name}_schema", node=schema)
