"""What the torch loop changes besides the weights, saved in every checkpoint and restored
exactly on resume: an optimizer and a scheduler per phase of the objective, the fp16 loss
scaler, early stopping, every random generator, and the training time."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("dlrun")


@dataclass
class EarlyStopping:
    """Tracks the monitored metric; `stop` once it has not improved for `patience` epochs."""

    mode: str  # min or max
    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0

    def update(self, value: float, epoch: int, keep: bool = False) -> bool:
        """Record the epoch's value; True if it is the best so far (or `keep`: the one kept
        whatever its value)."""
        sign = 1.0 if self.mode == "min" else -1.0
        if keep or self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience


class TrainState:
    """Optimizers and schedulers by phase name, the scaler, early stopping, the batch-order
    generator; `state_dict()` for a checkpoint and `load()` to resume from one."""

    def __init__(
        self, net, objective, conf, device, steps_per_epoch: int, graphed: bool, frozen=None
    ):
        import torch

        from dlrun.graphs import optimizer_options, tensor_lr
        from dlrun.optim import SCHED_INTERVAL, build_optimizer, build_scheduler
        from dlrun.params import Frozen, param_groups

        tcfg = conf.trainer
        self.device, self.graphed = device, graphed
        self.frozen = frozen or Frozen()
        later = {id(p) for p in self.frozen.params} if self.frozen.unfreeze_at else set()
        stopping = tcfg.early_stopping
        self.stopper = EarlyStopping(stopping.mode, stopping.patience, stopping.min_delta)
        self.params, self.optimizers, self.schedulers, self.lr_tensors = {}, {}, {}, {}
        self.waiting = {}  # phase -> {group index: the parameters it gets when they unfreeze}
        for phase in objective.phases:
            if phase.name in self.optimizers:  # a phase run several times a step (d_steps)
                continue
            module = net if phase.module is None else getattr(net, phase.module)
            optim = objective.optim_config(phase.name, conf.optim)
            groups, self.waiting[phase.name] = param_groups(module, optim, later)
            params = [p for group in groups for p in group["params"]]
            optimizer = build_optimizer(
                optim, groups, device.type, **optimizer_options(conf, graphed)
            )
            if graphed and conf.sched.name != "none":  # a scheduler's rates reach the graphs
                self.lr_tensors[phase.name] = tensor_lr(optimizer, device)
            self.params[phase.name], self.optimizers[phase.name] = params, optimizer
            self.schedulers[phase.name] = build_scheduler(
                conf.sched,
                optimizer,
                max_epochs=tcfg.max_epochs,
                steps_per_epoch=steps_per_epoch,
                mode=self.stopper.mode,
            )
        self.interval = SCHED_INTERVAL[conf.sched.name]  # batch, epoch, metric or None
        self.scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "16")
        self.shuffle = torch.Generator().manual_seed(tcfg.seed)  # the batch order
        self.train_time = 0.0

    def lr(self) -> float:
        """The learning rate the first phase starts the epoch with (for the records): its
        optim.lr as scheduled, before any per-layer scale."""
        group = next(iter(self.optimizers.values())).param_groups[0]
        return float(group["lr"]) / group.get("lr_scale", 1.0)

    def start_epoch(self, epoch: int) -> bool:
        """At trainer.unfreeze_at_epoch the frozen parameters join their optimizers; True then."""
        if epoch != self.frozen.unfreeze_at:
            return False
        self.unfreeze()
        log.info("epoch %d: the frozen parameters train from now on", epoch)
        return True

    def unfreeze(self) -> None:
        """The frozen parameters train: each fills its waiting (empty) parameter group, which
        the scheduler has shaped from the start; the others' optimizer state stays as it is."""
        self.frozen.release()
        for name, waiting in self.waiting.items():
            groups = self.optimizers[name].param_groups
            for index, params in waiting.items():
                groups[index]["params"] = params
                self.params[name].extend(params)
            waiting.clear()

    def after_step(self) -> None:
        if self.interval == "batch":
            for scheduler in self.schedulers.values():
                scheduler.step()

    def end_epoch(self, value: float, epoch: int, keep_last: bool = False) -> bool:
        """Early stopping sees the monitored value; the schedules step, before the checkpoint,
        so that last.pt holds the state the next epoch starts from. True if it is the best
        (every epoch with `keep_last`)."""
        from dlrun.graphs import pin_lr

        improved = self.stopper.update(value, epoch, keep=keep_last)
        for name, scheduler in self.schedulers.items():
            if self.interval == "epoch":
                scheduler.step()
            elif self.interval == "metric":
                scheduler.step(value)
            if name in self.lr_tensors:
                pin_lr(self.optimizers[name], self.lr_tensors[name])
        return improved

    def state_dict(self) -> dict:
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {
                k: s.state_dict() if s is not None else None for k, s in self.schedulers.items()
            },
            "scaler": self.scaler.state_dict(),
            "early_stopping": {
                "best": self.stopper.best,
                "best_epoch": self.stopper.best_epoch,
                "wait": self.stopper.wait,
            },
            "rng": rng_state(self.shuffle, self.device),
            "train_time_s": self.train_time,
        }

    def load(self, saved: dict) -> None:
        """Every state of a checkpoint (one written before phases had names has one optimizer
        and one scheduler: the main phase's)."""
        from dlrun.graphs import tensor_lr

        if self.frozen.unfreeze_at is not None and saved["epoch"] >= self.frozen.unfreeze_at:
            self.unfreeze()  # the optimizers had these groups filled when they were saved
        optimizers = saved.get("optimizers") or {"main": saved["optimizer"]}
        schedulers = saved.get("schedulers") or {"main": saved.get("scheduler")}
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(optimizers[name])
            if self.schedulers[name] is not None and schedulers.get(name) is not None:
                self.schedulers[name].load_state_dict(schedulers[name])
            if name in self.lr_tensors:  # load_state_dict put back the saved numbers
                self.lr_tensors[name] = tensor_lr(optimizer, self.device)
        self.scaler.load_state_dict(saved["scaler"])
        stopping = saved["early_stopping"]
        self.stopper.best = stopping["best"]
        self.stopper.best_epoch = stopping["best_epoch"]
        self.stopper.wait = stopping["wait"]
        restore_rng(saved["rng"], self.shuffle, self.device)
        self.train_time = saved.get("train_time_s", 0.0)


def rng_state(shuffle, device) -> dict:
    """Every random generator a run draws from, in types a weights_only checkpoint can hold."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def restore_rng(state: dict, shuffle, device) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
