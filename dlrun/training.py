"""The torch training loop: optimizer, scheduler, clipping, early stopping, precision, device.

Data held in memory lives on the training device for the whole run; each epoch takes batches by
slicing a shuffled index, so the hot loop has no per-sample Python and no host synchronisation:
losses and gradient norms are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlrun import STARTED
from dlrun.checkpoints import load_checkpoint, save_checkpoint
from dlrun.errors import Diverged, Interrupted
from dlrun.metrics import compute_metrics
from dlrun.optim import SCHED_INTERVAL, build_optimizer, build_scheduler

log = logging.getLogger("dlrun")

EVAL_BATCH = 1024


@dataclass
class EarlyStopping:
    """Tracks the monitored metric; `stop` once it has not improved for `patience` epochs."""

    mode: str  # min or max
    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record the epoch's value; True if it is the best so far."""
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience


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
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str):
    """'auto' picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    import torch

    from dlrun import distributed
    from dlrun.errors import ConfigError

    if distributed.world_size() > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())  # one GPU per rank
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        log.info("trainer.device=auto: no GPU found, training on the CPU")
        return torch.device("cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(
                f"trainer.device: '{name}' was asked for but this machine has {have}. "
                "Use trainer.device=cpu or auto."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.device: 'mps' was asked for but is not available. Use cpu or auto."
        )
    return torch.device(name)


def use_stream(placement: str, device, nbytes: int) -> bool:
    """Whether training batches stream from host memory (trainer.data_placement): `auto`
    streams only when the training split would take over half of the GPU's free memory (on a
    CPU the data already is in the memory it trains from)."""
    if placement != "auto":
        return placement == "stream"
    if device.type != "cuda":
        return False
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return nbytes > free / 2


def sweep_job_device(name: str, job_num: int | None, gpus: int) -> str:
    """In a sweep on a machine with several GPUs, job k trains on GPU k mod GPUs, so jobs that a
    parallel launcher runs at once each have their own device."""
    if job_num is None or gpus < 2 or name not in ("auto", "cuda"):
        return name
    return f"cuda:{job_num % gpus}"


def hydra_job_num() -> int | None:
    """The job's number within a Hydra multirun, None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().job.num


def job_device(name: str):
    """The device of this run: `resolve_device`, with a sweep's jobs spread over the GPUs."""
    import torch

    from dlrun import distributed

    if distributed.world_size() == 1 and torch.cuda.is_available():
        name = sweep_job_device(name, hydra_job_num(), torch.cuda.device_count())
    return resolve_device(name)


def autocast(device, precision: str, cache: bool = True):
    """Mixed precision for bf16 / 16. `cache=False` inside a CUDA graph capture (autocast's
    cache of cast weights would outlive the capture)."""
    import torch

    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def uses_channels_last(tcfg, device, net) -> bool:
    """Channels-last memory for convolutional networks on CUDA: auto turns it on with bf16 or
    16-bit precision, where tensor-core convolutions want it."""
    import torch

    if device.type != "cuda" or tcfg.channels_last == "off":
        return False
    if not any(isinstance(m, torch.nn.Conv2d) for m in net.modules()):
        return False
    return tcfg.channels_last == "on" or tcfg.precision in ("bf16", "16")


def predict(model, x, task: str, precision: str = "32", batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Outputs for every sample of `x` (a tensor on the model's device): class probabilities
    (classification) or predictions (regression), as one host array."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad(), autocast(x.device, precision):
        for start in range(0, len(x), batch_size):
            outs.append(model(x[start : start + batch_size]).float())
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
) -> FitResult:
    """Train `model` on splits['train'], monitor splits['val'], keep last.pt and best.pt.

    `resume` (a last.pt) continues from its epoch with every state it holds restored, so the run
    ends where the uninterrupted one would have. With `data` (the DataModule) images train from
    their compact stored form (dlrun.data.device): each batch is scaled, normalized, resized and
    augmented on the device.
    """
    import torch
    from torch.nn.utils import clip_grad_value_, clip_grads_with_norm_, get_total_norm

    from dlrun import distributed
    from dlrun.graphs import GraphedSteps, graph_plan, optimizer_options, pin_lr, tensor_lr

    tcfg = conf.trainer
    net = model.to(device)  # the network itself; `model` is what trains (DDP-wrapped on N ranks)
    world = distributed.world_size() if distributed.active() else 1
    rank = distributed.rank() if world > 1 else 0
    main = rank == 0
    channels_last = uses_channels_last(tcfg, device, net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(net, device_ids=device_ids)
    if tcfg.compile != "off":
        model = torch.compile(model, mode=None if tcfg.compile == "default" else tcfg.compile)
    compact = data is not None and getattr(data, "stored", None) is not None
    # the training inputs as kept in host memory: compact images, or the prepared arrays
    host_x = data.stored["train"] if compact else splits["train"][0]
    streaming = use_stream(tcfg.data_placement, device, host_x.nbytes)
    graphed, why_not = graph_plan(conf, device, world, net, streaming)
    if why_not is not None:
        log.info("CUDA graphs off: %s", why_not)
    stored = None  # images kept compact, prepared per batch on the device
    x_train = None
    if compact:
        from dlrun.data.device import device_inputs

        stored = device_inputs(data, "train", device, takes, copy=not streaming)
    elif not streaming:
        x_train = torch.as_tensor(host_x, device=device)
    y_host = np.asarray(splits["train"][1])
    if spec.task == "regression":
        y_host = y_host.reshape(len(y_host), -1)  # (N, T), as the network predicts
    y_train = torch.as_tensor(y_host, device=device)
    x_val = torch.as_tensor(splits["val"][0], device=device)
    y_val = splits["val"][1]

    n = len(y_train)
    batch = min(tcfg.batch_size, n)
    steps = math.ceil(n / batch)
    if world > 1 and 0 < n % batch < world:
        steps -= 1  # a last batch smaller than the ranks would leave a rank with nothing
    seen = min(steps * batch, n)  # samples per epoch
    # samples in each global batch (all full but perhaps the last), known before training
    step_sizes = [batch] * (steps - 1) + [seen - batch * (steps - 1)]
    sizes = torch.tensor(step_sizes, dtype=torch.float32, device=device)
    monitor = tcfg.early_stopping.monitor
    stopper = EarlyStopping(
        tcfg.early_stopping.mode, tcfg.early_stopping.patience, tcfg.early_stopping.min_delta
    )
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(conf.optim, params, device.type, **optimizer_options(conf, graphed))
    lr_tensors = None
    if graphed and conf.sched.name != "none":
        lr_tensors = tensor_lr(optimizer, device)  # a scheduler's new rates reach the graphs
    scheduler = build_scheduler(
        conf.sched, optimizer, max_epochs=tcfg.max_epochs, steps_per_epoch=steps, mode=stopper.mode
    )
    interval = SCHED_INTERVAL[conf.sched.name]
    loss_fn = {
        "cross_entropy": torch.nn.CrossEntropyLoss,
        "mse": torch.nn.MSELoss,
        "l1": torch.nn.L1Loss,
    }[tcfg.loss]
    mean_loss, loss_fn = loss_fn(), loss_fn(reduction="none")  # one process / DDP shards
    # Regression networks predict in the target's units (dlrun.nn.TargetScaled); dividing the
    # loss by the target's variance (or std for l1) gives the gradients of a standardized
    # target, so learning rates mean the same whatever the units. Reported losses stay in units.
    grad_scale = 1.0
    if spec.task == "regression":
        std = y_train.float().std(dim=0).clamp(min=1e-8)
        grad_scale = float((std**2).mean() if tcfg.loss == "mse" else std.mean())
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "16")
    shuffle = torch.Generator().manual_seed(tcfg.seed)
    ckpt_dir = run_dir / "checkpoints"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    config = conf_dict(conf)

    history: list[dict] = []
    train_time = 0.0
    start = 1
    if resume is not None:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume["scheduler"] is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if lr_tensors is not None:  # load_state_dict put back the saved numbers
            lr_tensors = tensor_lr(optimizer, device)
        stopping = resume["early_stopping"]
        stopper.best, stopper.best_epoch, stopper.wait = (
            stopping["best"],
            stopping["best_epoch"],
            stopping["wait"],
        )
        restore_rng(resume["rng"], shuffle, device)
        train_time = resume.get("train_time_s", 0.0)
        # last.pt is the epoch's commit point: metrics.jsonl is made to agree with it (a line of
        # an epoch that never reached last.pt goes, a line lost to a kill comes back)
        history = resume.get("history") or [
            r for r in read_records(run_dir) if r["epoch"] <= resume["epoch"]
        ]
        if main:
            rewrite_records(run_dir, history)
        start = resume["epoch"] + 1
        log.info("resuming at epoch %d of %d from %s", start, tcfg.max_epochs, run_dir)
    health = None
    if tcfg.diagnostics:
        from dlrun.health import PROBE, Monitor

        y_probe = torch.as_tensor(y_val[:PROBE], device=device)
        if spec.task == "regression":
            y_probe = y_probe.reshape(len(y_probe), -1)
        health = Monitor(net, x_val[:PROBE], y_probe, loss_fn, sequence=len(spec.shape) == 2)
    metrics_file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8") if main else None

    # per-step numbers stay on the device until the epoch's one synchronisation
    step_loss = torch.zeros(steps, device=device)  # mean loss of each step
    step_norm = torch.zeros(steps, device=device)  # gradient norm before clipping

    def fetch(idx):
        """This rank's samples of the global batch `idx` (device indices), from device memory."""
        if world > 1:
            idx = idx[rank::world]  # this rank's share of the global batch
        xb = stored.take(idx, train=True) if stored is not None else x_train[idx]  # (B, *shape)
        return xb, y_train[idx]  # (B,) or (B, T)

    def train_step(xb, yb, global_batch: int):
        """One step on this rank's inputs and targets of a global batch; returns the step's mean
        loss and its gradient norm before clipping, as device scalars (no host synchronisation)."""
        if channels_last and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, tcfg.precision, cache=not graphed):
            out = model(xb)
        if world == 1:
            loss = mean_loss(out.float(), yb)
        else:
            per_sample = loss_fn(out.float(), yb)  # (B,) or (B, T)
            if per_sample.ndim > 1:
                per_sample = per_sample.flatten(1).mean(dim=1)
            shard_sum = per_sample.sum()
            # the mean over the global batch: DDP's average over ranks then gives exactly the
            # single-process gradient, even when the shards differ in size
            loss = shard_sum * (world / global_batch)  # a rank's part of the mean
        # a captured step needs its gradient buffers to stay where they are
        optimizer.zero_grad(set_to_none=not graphed)
        if scaler.is_enabled():  # fp16: scaled backward, then true gradients
            scaler.scale(loss / grad_scale).backward()
            scaler.unscale_(optimizer)
        else:
            (loss / grad_scale if grad_scale != 1.0 else loss).backward()
        # The norm before clipping is what tells a user whether clipping is needed.
        norm = get_total_norm([p.grad for p in params if p.grad is not None])
        if tcfg.clip.max_norm is not None:
            clip_grads_with_norm_(params, tcfg.clip.max_norm, norm)
        if tcfg.clip.value is not None:
            clip_grad_value_(params, tcfg.clip.value)
        if scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return loss.detach(), norm

    run_steps = None
    if graphed:
        # static buffers a captured step reads: the epoch's order and the step counter
        order = torch.zeros(n, dtype=torch.long, device=device)
        counter = torch.zeros(1, dtype=torch.long, device=device)
        full = seen // batch  # full batches an epoch
        rows = order[: full * batch].view(full, batch)  # step k's samples: row k

        def body(size: int) -> None:
            # a full batch picks its row by the counter; the last partial batch is the tail
            idx = rows.index_select(0, counter).view(-1) if size == batch else order[full * batch :]
            loss, norm = train_step(*fetch(idx), size)
            step_loss.index_copy_(0, counter, loss.reshape(1))
            step_norm.index_copy_(0, counter, norm.reshape(1).to(step_norm.dtype))
            counter.add_(1)

        run_steps = GraphedSteps(body, device)

    loader = None
    if streaming:
        from dlrun.streaming import BatchLoader

        loader = BatchLoader(host_x, y_host, tcfg.workers, pin=device.type == "cuda")
        log.info(
            "training data (%.2f GB) streams from host memory: %d DataLoader workers%s",
            host_x.nbytes / 1e9,
            tcfg.workers,
            ", pinned memory" if device.type == "cuda" else "",
        )

    epoch = start - 1
    startup = time.perf_counter() - STARTED
    stop = GracefulStop()
    try:
        stop.__enter__()
        for epoch in range(start, tcfg.max_epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            lr = float(optimizer.param_groups[0]["lr"])  # the rate this epoch starts with
            perm = torch.randperm(n, generator=shuffle)
            if loader is not None:  # the same batches, read from host memory by the workers
                batches = iter(
                    loader.epoch(
                        [perm[s * batch : (s + 1) * batch][rank::world] for s in range(steps)]
                    )
                )
            else:
                perm = perm.to(device)
            if run_steps is not None:
                order.copy_(perm)
                counter.zero_()
            for step in range(steps):
                if run_steps is not None:  # replayed: the graph reads order and counter
                    run_steps(step_sizes[step])
                    loss = None
                elif loader is not None:
                    xb, yb = next(batches)
                    xb = xb.to(device, non_blocking=True)
                    yb = yb.to(device, non_blocking=True)
                    if stored is not None:
                        xb = stored.prepare(xb, train=True)
                    loss, norm = train_step(xb, yb, step_sizes[step])
                else:
                    idx = perm[step * batch : (step + 1) * batch]
                    loss, norm = train_step(*fetch(idx), len(idx))
                if loss is not None:
                    step_loss[step] = loss  # small copies, no sync
                    step_norm[step] = norm
                if interval == "batch":
                    scheduler.step()
                if stop.signum is not None and world == 1:  # ranks agree once an epoch
                    break
            if stop.signum is not None and step < steps - 1:
                # Stopped inside the epoch: last.pt keeps the end of the previous one, which is
                # where a resumed run starts again, exactly.
                epoch -= 1
                break
            # the epoch's one host synchronisation; DDP ranks each hold their part of every mean
            total = distributed.all_sum((step_loss * sizes).sum()) / (world if world > 1 else 1)
            train_loss = (total / seen).item()
            norms = step_norm[: step + 1]
            norm_max = (
                norms[torch.isfinite(norms)].max() if torch.isfinite(norms).any() else norms.max()
            )
            epoch_train_time = time.perf_counter() - t_epoch
            train_time += epoch_train_time

            if not math.isfinite(train_loss):
                raise diverged(train_loss, epoch, step_loss, steps, norm_max, stopper, conf)
            val = compute_metrics(
                spec.task, y_val, predict(net, x_val, spec.task, tcfg.precision), tcfg.loss
            )
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in val.items()},
                "lr": lr,
                "grad_norm": norms.mean().item(),
                **(
                    {"clip_frac": (norms > tcfg.clip.max_norm).float().mean().item()}
                    if tcfg.clip.max_norm is not None
                    else {}
                ),
                "grad_norm_max": norm_max.item(),
            }
            improved = stopper.update(record[monitor], epoch)
            # step the schedule before saving, so last.pt holds the state the next epoch starts from
            if interval == "epoch":
                scheduler.step()
            elif interval == "metric":
                scheduler.step(record[monitor])
            if lr_tensors is not None:
                pin_lr(optimizer, lr_tensors)
            if health is not None:
                t_health = time.perf_counter()
                record.update(health.measure())  # one probe batch: no cost in the steps
                record["health/probe_time_s"] = time.perf_counter() - t_health
            record["train_time_s"] = epoch_train_time  # the training steps alone
            record["epoch_time_s"] = time.perf_counter() - t_epoch
            history.append(record)
            if main:
                state = {
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "early_stopping": {
                        "best": stopper.best,
                        "best_epoch": stopper.best_epoch,
                        "wait": stopper.wait,
                    },
                    "rng": rng_state(shuffle, device),
                    "train_time_s": train_time,
                    "config": config,
                    "history": history,  # metrics.jsonl can always be rebuilt from last.pt
                }
                # One commit point: best.pt first, then last.pt (the epoch exists once last.pt
                # is renamed into place), then the metrics line, which last.pt can restore.
                with stop.writing():
                    if improved:
                        save_checkpoint(ckpt_dir / "best.pt", state)
                    save_checkpoint(ckpt_dir / "last.pt", state)
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if progress is not None:
                    progress(record, improved)
            if world > 1:  # every rank stops at the same epoch when one was signalled
                flag = torch.tensor(float(stop.signum or 0), device=device)
                if distributed.all_sum(flag).item() > 0 and stop.signum is None:
                    stop.signum = int(signal.SIGTERM)
            if stop.signum is not None:
                break
            if stopper.stop:
                log.info(
                    "early stopping: %s has not improved for %d epochs (best %.4g at epoch %d)",
                    monitor,
                    stopper.wait,
                    stopper.best,
                    stopper.best_epoch,
                )
                break
    finally:
        stop.__exit__()
        if metrics_file is not None:
            metrics_file.close()
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        if epoch == 0:
            raise Interrupted(
                f"interrupted by {name} before the first epoch ended; nothing to resume.",
                stop.signum,
            )
        raise Interrupted(
            f"interrupted by {name} after epoch {epoch}; continue with trainer.resume={run_dir}",
            stop.signum,
        )

    distributed.barrier()  # rank 0 has written best.pt
    best = load_checkpoint(ckpt_dir / "best.pt", map_location=str(device))
    net.load_state_dict(best["model"])
    return FitResult(
        best_epoch=stopper.best_epoch,
        best_value=stopper.best,
        epochs_run=epoch,
        stopped_early=stopper.stop and epoch < tcfg.max_epochs,
        train_time_s=train_time,
        samples_seen=seen * epoch,
        history=history,
        cuda_graphs=run_steps is not None and bool(run_steps.graphs) and not run_steps.failed,
        startup_s=startup,
    )


def diverged(train_loss, epoch, step_loss, steps, norm_max, stopper, conf) -> Diverged:
    """The error of a NaN or infinite training loss: where, the likely causes, and what the
    checkpoints really hold."""
    peak = norm_max.item()
    if stopper.best_epoch:
        kept = (
            f"checkpoints/best.pt keeps epoch {stopper.best_epoch}, the best before it "
            f"({conf.trainer.early_stopping.monitor} {stopper.best:.4g})"
        )
    else:
        kept = "no epoch finished, so no checkpoint was written"
    error = Diverged(
        f"the training loss became {train_loss} in epoch {epoch}, step "
        f"{first_nonfinite(step_loss)} of {steps}. Likely causes: a learning rate too high "
        f"(optim.lr={conf.optim.lr}) or no gradient clipping (try "
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


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_records(run_dir: Path, records: list[dict]) -> None:
    from dlrun.checkpoints import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text), mode="w")


def first_nonfinite(step_loss) -> int:
    """The 1-based step whose loss first was NaN or infinite (read only when a run diverges)."""
    import torch

    bad = (~torch.isfinite(step_loss)).nonzero()
    return int(bad[0, 0]) + 1 if len(bad) else len(step_loss)
