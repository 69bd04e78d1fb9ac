"""Optimizers and learning-rate schedulers: schemas (`optim/`, `sched/`) and builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dlrun.config import OptimConfig, SchedConfig, setting, store_schema

# ---------------------------------------------------------------------------------- optimizers


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    lr: float = setting(0.05, lo=0, lo_open=True)


@dataclass
class MomentumConfig(OptimConfig):
    name: str = "momentum"
    lr: float = setting(0.05, lo=0, lo_open=True)
    momentum: float = setting(0.9, lo=0, hi=1, hi_open=True)
    dampening: float = setting(0.0, lo=0, hi=1, hi_open=True)


@dataclass
class NesterovConfig(OptimConfig):
    name: str = "nesterov"
    lr: float = setting(0.05, lo=0, lo_open=True)
    momentum: float = setting(0.9, lo=0, hi=1, lo_open=True, hi_open=True)


@dataclass
class AdagradConfig(OptimConfig):
    name: str = "adagrad"
    lr: float = setting(0.05, lo=0, lo_open=True)
    lr_decay: float = setting(0.0, lo=0)
    eps: float = setting(1e-10, lo=0, lo_open=True)


@dataclass
class RMSpropConfig(OptimConfig):
    name: str = "rmsprop"
    alpha: float = setting(0.99, lo=0, hi=1, lo_open=True, hi_open=True)
    eps: float = setting(1e-8, lo=0, lo_open=True)
    momentum: float = setting(0.0, lo=0, hi=1, hi_open=True)
    centered: bool = False


@dataclass
class AdamConfig(OptimConfig):
    name: str = "adam"
    betas: list[float] = setting([0.9, 0.999], lo=0, hi=1, hi_open=True)
    eps: float = setting(1e-8, lo=0, lo_open=True)
    amsgrad: bool = False

    def problems(self) -> list[str]:
        if len(self.betas) != 2:
            return [f"optim.betas must list 2 numbers in [0, 1). Got {list(self.betas)}."]
        return []


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = setting(0.01, lo=0)


OPTIMIZERS = {
    c.name: c
    for c in (
        SGDConfig,
        MomentumConfig,
        NesterovConfig,
        AdagradConfig,
        RMSpropConfig,
        AdamConfig,
        AdamWConfig,
    )
}


def build_optimizer(cfg: OptimConfig, params, device_type: str = "cpu", **extra):
    """The optimizer `cfg` names; `extra` adds constructor options (capturable, fused) that
    dlrun.graphs asks for when training steps are captured as CUDA graphs."""
    import torch

    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **extra}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, **common)
    if cfg.name == "momentum":
        return torch.optim.SGD(params, momentum=cfg.momentum, dampening=cfg.dampening, **common)
    if cfg.name == "nesterov":
        return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=True, **common)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr_decay=cfg.lr_decay, eps=cfg.eps, **common)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            alpha=cfg.alpha,
            eps=cfg.eps,
            momentum=cfg.momentum,
            centered=cfg.centered,
            **common,
        )
    # Adam and AdamW: the fused CUDA kernels where the parameters live on a GPU.
    if device_type == "cuda":
        common.setdefault("fused", True)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, betas=tuple(cfg.betas), eps=cfg.eps, amsgrad=cfg.amsgrad, **common)


# ---------------------------------------------------------------------------------- schedulers


@dataclass
class NoSchedConfig(SchedConfig):
    name: str = "none"


@dataclass
class StepSchedConfig(SchedConfig):
    name: str = "step"
    step_size: int = setting(10, lo=1)  # epochs between decays
    gamma: float = setting(0.1, lo=0, hi=1, lo_open=True)


@dataclass
class CosineSchedConfig(SchedConfig):
    name: str = "cosine"
    t_max: Optional[int] = setting(None, lo=1)  # epochs of one half-cosine; null: max_epochs
    eta_min: float = setting(0.0, lo=0)


@dataclass
class OneCycleSchedConfig(SchedConfig):
    name: str = "onecycle"
    max_lr: Optional[float] = setting(None, lo=0, lo_open=True)  # null: 10x optim.lr
    pct_start: float = setting(0.3, lo=0, hi=1, lo_open=True, hi_open=True)
    anneal_strategy: str = setting("cos", choices=("cos", "linear"))


@dataclass
class PlateauSchedConfig(SchedConfig):
    name: str = "plateau"
    factor: float = setting(0.1, lo=0, hi=1, lo_open=True, hi_open=True)
    patience: int = setting(3, lo=0)  # epochs without improvement of the monitored metric
    min_lr: float = setting(0.0, lo=0)


SCHEDULERS = {
    c.name: c
    for c in (
        NoSchedConfig,
        StepSchedConfig,
        CosineSchedConfig,
        OneCycleSchedConfig,
        PlateauSchedConfig,
    )
}

# When each scheduler steps: once per epoch, once per batch, or on the monitored metric.
SCHED_INTERVAL = {
    "none": None,
    "step": "epoch",
    "cosine": "epoch",
    "onecycle": "batch",
    "plateau": "metric",
}


def build_scheduler(
    cfg: SchedConfig, optimizer, *, max_epochs: int, steps_per_epoch: int, mode: str
):
    """The scheduler `cfg` names, on every parameter group of `optimizer`: a group with a
    per-layer rate (its `lr_scale`, dlrun.params) keeps that scale through the schedule,
    onecycle's max_lr and plateau's min_lr included (cosine's eta_min is one floor for all)."""
    from torch.optim import lr_scheduler

    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.t_max or max_epochs, eta_min=cfg.eta_min
        )
    groups = optimizer.param_groups
    if cfg.name == "onecycle":
        max_lr = [
            cfg.max_lr * g.get("lr_scale", 1.0) if cfg.max_lr else 10 * g["lr"] for g in groups
        ]
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            epochs=max_epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal_strategy,
        )
    min_lr = [cfg.min_lr * g.get("lr_scale", 1.0) for g in groups]
    return lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=cfg.factor, patience=cfg.patience, min_lr=min_lr
    )


def store_schemas() -> None:
    for name, schema in OPTIMIZERS.items():
        store_schema("optim", name, schema)
    for name, schema in SCHEDULERS.items():
        store_schema("sched", name, schema)
