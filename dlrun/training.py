"""The torch loop: a loop that does not know what it trains.

An objective (dlrun.objectives) says what one step computes from a batch and what evaluation
means. This loop owns everything else, once, for every objective: placement on the device
(channels-last, compact device storage or streaming), DistributedDataParallel, torch.compile
and whole-step CUDA graphs (dlrun.step), an optimizer and a scheduler per phase (dlrun.state),
clipping, precision, early stopping, one commit point per epoch (best.pt, last.pt, then the
metrics line), exact resume, signals, divergence, health probes and progress.

Data held in memory lives on the training device for the whole run (dlrun.batches): the hot
loop has no per-sample Python and no host synchronisation; losses and gradient norms stay on
the device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlrun import STARTED
from dlrun.checkpoints import load_checkpoint, save_checkpoint
from dlrun.devices import (  # noqa: F401  (seed_everything, job_device, ...: dlrun.training's API)
    autocast,
    hydra_job_num,
    job_device,
    resolve_device,
    seed_everything,
    sweep_job_device,
    use_stream,
    uses_channels_last,
)
from dlrun.errors import Diverged, Interrupted

log = logging.getLogger("dlrun")

EVAL_BATCH = 1024


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    train_time_s: float  # time in training steps only (no validation, no checkpoints)
    samples_seen: int
    history: list[dict] = field(default_factory=list)
    cuda_graphs: bool = False  # training steps were replayed as CUDA graphs
    startup_s: float | None = None  # from dlrun's start (its import) to the first training step


@contextlib.contextmanager
def handling(handle):
    """`handle` for SIGINT and SIGTERM inside the block, the handlers before it restored after;
    nothing outside the main thread (where Python runs no signal handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# A signal a sweep job received outside its training loop (holding_signals); the loop's
# GracefulStop starts with it and stops after its first step.
PENDING: list[int] = []


@contextlib.contextmanager
def holding_signals():
    """Around a sweep job: SIGINT / SIGTERM while it prepares its data or writes its results do
    not kill the process (a joblib worker's death would end the whole sweep, the in-process
    launcher's its report); they are kept in PENDING, and the training loop stops as soon as
    it starts. A second SIGINT quits at once."""
    PENDING.clear()

    def handle(signum, frame) -> None:
        if PENDING and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not PENDING:
            PENDING.append(signum)
            log.warning("%s: the sweep stops after this job", signal.Signals(signum).name)

    with handling(handle):
        yield


@contextlib.contextmanager
def stop_on_signals(name: str):
    """Around an estimator's fit (a forest, XGBoost, a linear model: one call, no epochs to keep
    or resume): SIGINT / SIGTERM end it at once with an `Interrupted` that says so, recorded in
    summary.json like any stopped run (a signal held before it, by a sweep job, too)."""

    def interrupted(signum: int) -> Interrupted:
        return Interrupted(
            f"interrupted by {signal.Signals(signum).name} while {name} was fitting; it has no "
            "epochs to resume: run the command again.",
            signum,
        )

    if PENDING:
        raise interrupted(PENDING[0])

    def handle(signum, frame) -> None:
        raise interrupted(signum)

    with handling(handle):
        yield


class GracefulStop:
    """SIGINT / SIGTERM set `signum`; the loop finishes its current step and stops. A second
    SIGINT quits at once (KeyboardInterrupt), except inside `writing()`: a checkpoint being
    written is finished first, then it quits. Handlers are restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._writing = False
        self._quit = False

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            if self._writing:
                self._quit = True
                log.warning("SIGINT again: quitting as soon as the checkpoints are written")
                return
            raise KeyboardInterrupt
        if self.signum is not None:  # another signal (a sweep's SIGTERM after Ctrl-C): once
            return
        self.signum = signum
        log.warning(
            "%s: stopping after the current step (press Ctrl-C again to quit at once)",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def writing(self):
        """The epoch's commit: a second Ctrl-C waits until it is on disk."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._quit:
            raise KeyboardInterrupt

    def __enter__(self) -> GracefulStop:
        if PENDING:  # received while the job prepared: stop after the first step
            self.signum = PENDING[0]
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def predict(
    model, x, task: str, precision: str = "32", batch_size: int = EVAL_BATCH, lengths=None
) -> np.ndarray:
    """Outputs for every sample of `x` (a tensor on the model's device; `lengths` (N,) the
    valid steps of padded sequences): class probabilities (classification) or predictions
    (regression), as one host array."""
    import torch

    from dlrun.data.lazy import in_batches

    model.eval()
    outs = []
    with torch.no_grad(), autocast(x.device, precision):
        for part, xb in in_batches(x, batch_size):
            out = model(xb) if lengths is None else model(xb, lengths[part])
            outs.append(out.float())
    out = torch.cat(outs).cpu().double()  # (N, K) or (N, T)
    if task == "classification":
        out = torch.softmax(out, dim=1)  # in float64, so each row sums to 1 for log_loss
    return out.numpy()


def fit_torch(
    model,
    splits,
    spec,
    conf,
    run_dir: Path,
    device,
    progress=None,
    resume: dict | None = None,
    data=None,
    takes: str | None = None,
    objective=None,
) -> FitResult:
    """Train `model` for `objective` (by default the data's own: classes or targets) on
    splits['train'], evaluate splits['val'] every epoch, keep last.pt and best.pt. An empty
    validation split (a cross-validated run's refit on every non-test row) trains its
    last_epoch(conf) epochs and keeps the last one as best.pt.

    `resume` (a last.pt) continues from its epoch with every state it holds restored, so the run
    ends where the uninterrupted one would have. With `data` (the DataModule) images train from
    their compact stored form (dlrun.data.device): each batch is scaled, normalized, resized and
    augmented on the device.
    """
    from dlrun import distributed
    from dlrun.batches import TrainBatches
    from dlrun.data.lazy import on_device
    from dlrun.objectives import supervised_objective
    from dlrun.params import freeze

    tcfg = conf.trainer
    on_step = getattr(progress, "step", None)  # a bar of the epoch's steps (dlrun.report)
    objective = objective or supervised_objective(conf, spec, splits["train"][1])
    world = distributed.world_size() if distributed.active() else 1
    main = world == 1 or distributed.rank() == 0
    if world > 1 and len({p.name for p in objective.phases}) > 1:
        from dlrun.errors import ConfigError

        raise ConfigError(
            f"trainer.devices: {conf.model.name} trains in several phases (one optimizer each), "
            "which DistributedDataParallel does not support yet. Use trainer.devices=1."
        )
    if world > 1 and tcfg.unfreeze_at_epoch is not None:  # started by torchrun itself
        from dlrun.errors import ConfigError

        raise ConfigError(
            "trainer.unfreeze_at_epoch cannot be used with DistributedDataParallel, which fixes "
            "the trained parameters when it starts. Train in one process, or do not unfreeze."
        )
    frozen = freeze(model, tcfg, objective)  # before DDP, which registers what trains
    net, model, channels_last = place(model, tcfg, device, world)
    batches = TrainBatches(
        splits, data, takes, device, tcfg, world, distributed.rank() if world > 1 else 0
    )
    state, steps = plan_steps(
        net, model, objective, conf, device, world, batches, channels_last, frozen
    )
    x_val = on_device(splits["val"][0], data, "val", device, takes, tcfg.workers, tcfg.batch_size)
    y_val = splits["val"][1]
    val_lengths = None if batches.lengths is None else _as_device(data.lengths["val"], device)
    validating = len(y_val) > 0  # the refit of a cross-validated run has no validation rows

    def val() -> dict:  # the validation metrics of the network as it is now
        return objective.evaluate(net, x_val, y_val, lengths=val_lengths)

    history, start = [], 1
    if resume is not None:
        history, start = restore(net, state, resume, run_dir, main, tcfg.max_epochs)
    health = None
    if tcfg.diagnostics and validating:
        health = probe(net, objective, x_val, y_val, val_lengths, spec, device)
    ckpt_dir = run_dir / "checkpoints"
    monitor, config, epoch = tcfg.early_stopping.monitor, conf_dict(conf), start - 1
    startup = time.perf_counter() - STARTED
    with GracefulStop() as stop, Records(run_dir, main) as records:
        for epoch in range(start, last_epoch(conf) + 1):
            t_epoch = time.perf_counter()
            if state.start_epoch(epoch) and health is not None:  # trainer.unfreeze_at_epoch
                health.follow_layers()  # the unfrozen layers are measured too
            state.frozen.train_mode(model)  # frozen batch norms stay in eval mode
            lr = state.lr()  # the rate this epoch starts with
            done = steps.run_epoch(batches.order(state.shuffle), stop, on_step)
            if done < batches.steps:  # stopped inside the epoch: last.pt keeps the one before
                epoch -= 1
                break
            numbers = steps.epoch_numbers(done)  # the epoch's one host synchronisation
            epoch_train_time = time.perf_counter() - t_epoch
            state.train_time += epoch_train_time
            record, improved = epoch_record(
                epoch, numbers, lr, state, steps, conf, val if validating else None, health
            )
            record["train_time_s"] = epoch_train_time  # the training steps alone
            record["epoch_time_s"] = time.perf_counter() - t_epoch
            history.append(record)
            if main:
                checkpoint = {"epoch": epoch, "model": net.state_dict(), **state.state_dict()}
                checkpoint.update(config=config, history=history)
                commit(ckpt_dir, checkpoint, record, improved, records, stop)
                objective.after_epoch(net, epoch, run_dir)  # e.g. a GAN's samples of the epoch
                if progress is not None:
                    progress(record, improved)
            if all_ranks_stop(stop, world, device) or early_stop(state.stopper, monitor):
                break
    if stop.signum is not None:
        raise interrupted(stop.signum, epoch, run_dir)

    distributed.barrier()  # rank 0 has written best.pt
    net.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=str(device))["model"])
    stopper = state.stopper
    return FitResult(
        best_epoch=stopper.best_epoch,
        best_value=stopper.best,
        epochs_run=epoch,
        stopped_early=stopper.stop and epoch < tcfg.max_epochs,
        train_time_s=state.train_time,
        samples_seen=batches.seen * epoch,
        history=history,
        cuda_graphs=steps.captured,
        startup_s=startup,
    )


def epoch_record(epoch, numbers, lr, state, steps, conf, val=None, health=None):
    """The epoch's metrics line once its steps ran (`numbers`: Steps.epoch_numbers), and whether
    it is a new best: a training loss that is not finite ends the run; the validation metrics
    (`val()`; None without validation rows) and the monitored value go to early stopping and
    the schedules; then the health probe. Without validation rows (a cross-validated run's
    refit) the schedules follow the training loss and every epoch is kept."""
    losses = [v for k, v in numbers.items() if k.startswith("train_loss")]
    if not all(math.isfinite(v) for v in losses):
        raise diverged(numbers, epoch, steps, state.stopper, conf)
    record = {"epoch": epoch, **numbers}
    if val is not None:
        record.update({f"val_{k}": v for k, v in val().items()})
    record["lr"] = lr
    value = losses[-1] if val is None else record[conf.trainer.early_stopping.monitor]
    improved = state.end_epoch(value, epoch, keep_last=val is None)
    if health is not None:
        t_health = time.perf_counter()
        record.update(health.measure())  # one probe batch: no cost in the steps
        record["health/probe_time_s"] = time.perf_counter() - t_health
    return record, improved


def last_epoch(conf) -> int:
    """trainer.max_epochs, or fewer in a cross-validated run's refit (data.cv.epochs: the
    folds' median best epoch), whose schedules still span max_epochs as the folds' did."""
    cv = getattr(getattr(conf, "data", None), "cv", None)
    refit = getattr(cv, "epochs", None)
    return conf.trainer.max_epochs if refit is None else min(refit, conf.trainer.max_epochs)


def place(model, tcfg, device, world: int):
    """(the network on the device, what trains: DDP-wrapped and/or compiled, channels_last)."""
    import torch

    net = model.to(device)
    channels_last = uses_channels_last(tcfg, device, net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(net, device_ids=device_ids)
    if tcfg.compile != "off":
        model = torch.compile(model, mode=None if tcfg.compile == "default" else tcfg.compile)
    return net, model, channels_last


def plan_steps(net, model, objective, conf, device, world, batches, channels_last, frozen=None):
    """Whether steps are captured as CUDA graphs (the log says why not), the optimizers and
    schedulers of the objective's phases (without the `frozen` parameters), and the step."""
    from dlrun.graphs import graph_plan
    from dlrun.state import TrainState
    from dlrun.step import Steps

    graphed, why_not = graph_plan(conf, device, world, net, batches.streaming)
    if why_not is not None:
        log.info("CUDA graphs off: %s", why_not)
    state = TrainState(net, objective, conf, device, batches.steps, graphed, frozen)
    return state, Steps(model, objective, state, batches, conf, device, world, channels_last)


def restore(net, state, resume: dict, run_dir: Path, main: bool, max_epochs: int):
    """Weights and every training state from a last.pt; metrics.jsonl made to agree with it (a
    line of an epoch that never reached last.pt goes, a line lost to a kill comes back).
    Returns (history, first epoch to run)."""
    net.load_state_dict(resume["model"])
    state.load(resume)
    history = resume.get("history") or [
        r for r in read_records(run_dir) if r["epoch"] <= resume["epoch"]
    ]
    if main:
        rewrite_records(run_dir, history)
    log.info("resuming at epoch %d of %d from %s", resume["epoch"] + 1, max_epochs, run_dir)
    return history, resume["epoch"] + 1


def probe(net, objective, x_val, y_val, lengths, spec, device):
    """The health monitor on a fixed probe batch of the validation split."""
    import torch

    from dlrun.health import PROBE, PROBE_BYTES, Monitor

    sample_bytes = 4 * math.prod(x_val.shape[1:])
    n = min(PROBE, max(16, PROBE_BYTES // sample_bytes))

    batch = {"x": x_val[:n], "y": torch.as_tensor(np.asarray(y_val[:n]), device=device)}
    if lengths is not None:
        batch["lengths"] = lengths[:n]
    return Monitor(
        net,
        batch,
        lambda b: objective.loss(net, b, objective.phases[-1].name),
        sequence=len(spec.shape) == 2,
    )


class Records:
    """metrics.jsonl, appended once an epoch by the process that writes the run folder."""

    def __init__(self, run_dir: Path, main: bool):
        self.path, self.main, self.file = run_dir / "metrics.jsonl", main, None

    def __enter__(self) -> Records:
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            (self.path.parent / "checkpoints").mkdir(exist_ok=True)
            self.file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def commit(ckpt_dir: Path, state: dict, record: dict, improved: bool, records, stop) -> None:
    """The epoch's one commit point: best.pt first, then last.pt (the epoch exists once last.pt
    is renamed into place), then the metrics line, which last.pt can restore. A second Ctrl-C
    waits until all three are on disk."""
    with stop.writing():
        if improved:
            save_checkpoint(ckpt_dir / "best.pt", state)
        save_checkpoint(ckpt_dir / "last.pt", state)
        records.write(record)


def all_ranks_stop(stop, world: int, device) -> bool:
    """Whether a signal stops the run after this epoch; under DDP every rank stops at the same
    epoch when one was signalled."""
    if world > 1:
        import torch

        from dlrun import distributed

        flag = torch.tensor(float(stop.signum or 0), device=device)
        if distributed.all_sum(flag).item() > 0 and stop.signum is None:
            stop.signum = int(signal.SIGTERM)
    return stop.signum is not None


def early_stop(stopper, monitor: str) -> bool:
    if stopper.stop:
        log.info(
            "early stopping: %s has not improved for %d epochs (best %.4g at epoch %d)",
            monitor,
            stopper.wait,
            stopper.best,
            stopper.best_epoch,
        )
    return stopper.stop


def interrupted(signum: int, epoch: int, run_dir: Path) -> Interrupted:
    name = signal.Signals(signum).name
    if epoch == 0:
        return Interrupted(
            f"interrupted by {name} before the first epoch ended; nothing to resume.", signum
        )
    return Interrupted(
        f"interrupted by {name} after epoch {epoch}; continue with trainer.resume={run_dir}",
        signum,
    )


def _as_device(x, device):
    import torch

    return torch.as_tensor(x, device=device)


def diverged(numbers: dict, epoch: int, steps, stopper, conf) -> Diverged:
    """The error of a NaN or infinite training loss: where, the likely causes, and what the
    checkpoints really hold."""
    peak = max((v for k, v in numbers.items() if k.startswith("grad_norm_max")), default=0.0)
    train_loss = next(
        v for k, v in numbers.items() if k.startswith("train_loss") and not math.isfinite(v)
    )
    if stopper.best_epoch:
        kept = (
            f"checkpoints/best.pt keeps epoch {stopper.best_epoch}, the best before it "
            f"({conf.trainer.early_stopping.monitor} {stopper.best:.4g})"
        )
    else:
        kept = "no epoch finished, so no checkpoint was written"
    error = Diverged(
        f"the training loss became {train_loss} in epoch {epoch}, step "
        f"{steps.first_nonfinite()} of {steps.batches.steps}. Likely causes: a learning rate too "
        f"high (optim.lr={conf.optim.lr}) or no gradient clipping (try "
        f"trainer.clip.max_norm=1.0). {kept}."
    )
    if conf.trainer.clip.max_norm is None and not (peak < 1e3):
        from dlrun.health import Finding

        error.health = [
            Finding(
                "exploding_gradients",
                f"the gradient norm reached {peak:.1e} in epoch {epoch} with clipping off",
                epoch,
                "high",
                "try trainer.clip.max_norm=1.0",
            ).as_dict()
        ]
    return error


def conf_dict(conf) -> dict:
    """The typed config as plain containers (what a weights_only checkpoint may hold)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(conf), resolve=True)


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_records(run_dir: Path, records: list[dict]) -> None:
    from dlrun.checkpoints import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text), mode="w")
