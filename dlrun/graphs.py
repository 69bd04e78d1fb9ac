"""Whole training steps as CUDA graphs: capture once, replay every step.

On small and medium models a training step is dozens of tiny kernels, and launching them from
Python costs more than running them. A CUDA graph records the kernels of one whole step
(gathering the batch, forward, backward, gradient norm and clipping, the optimizer's update and
the per-step loss written into an epoch buffer) and replays them with one launch. Everything a
step reads lives in static device buffers: the shuffled index of the epoch (`order`) and a step
counter on the device that the graph itself advances, so nothing changes between replays but
the buffers' contents.

The first steps of each batch size run eagerly (they are real training steps: they create the
optimizer's state and let cuDNN pick its kernels), then that size is captured; an epoch with a
last partial batch has a second graph for it. A capture that fails logs one line and the run
goes on eagerly.
"""

from __future__ import annotations

import logging

log = logging.getLogger("dlrun")

WARMUP = 2  # eager runs of each batch size before it is captured

# Optimizers whose update can be captured (state on the device, learning rate as a tensor).
CAPTURABLE = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")


def graph_plan(conf, device, world: int, net, streaming: bool = False) -> tuple[bool, str | None]:
    """Whether whole steps are captured, and if not, the reason (None where nothing needs
    saying: off on purpose, or not a CUDA device under `auto`)."""
    tcfg = conf.trainer
    wanted = tcfg.cuda_graphs
    if wanted == "off":
        return False, None
    if device.type != "cuda":
        return False, (
            None
            if wanted == "auto"
            else f"trainer.cuda_graphs=on needs a CUDA device, not {device}"
        )
    reasons = []
    if world > 1:
        reasons.append("DistributedDataParallel synchronises gradients with the host each step")
    if streaming:
        reasons.append("the training data streams from host memory (trainer.data_placement)")
    if tcfg.precision == "16":
        reasons.append("fp16 loss scaling reads the host each step (bf16 does not)")
    if tcfg.compile in ("reduce-overhead", "max-autotune"):
        reasons.append(f"trainer.compile={tcfg.compile} makes its own CUDA graphs")
    elif tcfg.compile != "off":
        reasons.append("trainer.compile is on (use reduce-overhead for its CUDA graphs)")
    if conf.optim.name not in CAPTURABLE:
        reasons.append(f"optim={conf.optim.name} keeps its state on the host")
    if conf.sched.name == "onecycle":
        reasons.append("sched=onecycle changes the momentum every step")
    if tcfg.unfreeze_at_epoch is not None:
        reasons.append("trainer.unfreeze_at_epoch changes what trains during the run")
    if not getattr(net, "static_graph", True):
        reasons.append(f"{type(net).__name__} has data-dependent control flow")
    if reasons:
        return False, "; ".join(reasons)
    return True, None


def optimizer_options(conf, graphed: bool) -> dict:
    """Extra optimizer arguments for a captured step."""
    if not graphed:
        return {}
    if conf.optim.name in ("adam", "adamw", "rmsprop"):
        return {"capturable": True}
    return {"fused": True}  # SGD: the fused kernel takes a tensor learning rate


def tensor_lr(optimizer, device) -> list:
    """Learning rates as device tensors, so a scheduler's changes reach the captured update;
    returns them, for `pin_lr`."""
    import torch

    tensors = []
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group and not isinstance(group[key], torch.Tensor):
                group[key] = torch.tensor(float(group[key]), device=device)
        tensors.append(group["lr"])
    return tensors


def pin_lr(optimizer, tensors: list) -> None:
    """After a scheduler step: the new rates written into the tensors the graphs read (recent
    schedulers fill them in place; older ones put a new value in the group)."""
    for group, tensor in zip(optimizer.param_groups, tensors, strict=True):
        if group["lr"] is not tensor:
            tensor.fill_(group["lr"])
            group["lr"] = tensor


class GraphedSteps:
    """Run `body(key)`: eagerly for its first `warmup` calls with that key, then captured as a
    CUDA graph once and replayed. Returns what `body` returned; after the capture, the tensors it
    returned while being captured, which each replay refills.

    `body` works on static device buffers and must not read the host. The training loop keys
    its steps by batch size; the health probe (dlrun.health) has one key.
    """

    def __init__(
        self, body, device, warmup: int = WARMUP, what: str = "training steps of batch size {}"
    ):
        import torch

        self.body = body
        self.warmup = warmup
        self.what = what  # for the log, formatted with the key
        self.graphs: dict = {}
        self.outputs: dict = {}  # key -> what body returned while being captured
        self.seen: dict = {}
        self.stream = torch.cuda.Stream(device)
        self.pool = None
        self.failed: str | None = None

    def __call__(self, key):
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            return self.outputs[key]
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.failed is not None or self.seen[key] <= self.warmup:
            return self._eager(key)
        return self._capture(key)

    def _eager(self, key):
        """An ordinary run on the side stream the graphs are captured on (libraries create
        their per-stream workspaces there before capture)."""
        import torch

        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self.body(key)
        current.wait_stream(self.stream)
        return out

    def _capture(self, key):
        import torch

        what = self.what.format(key)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                out = self.body(key)
        except Exception as ex:  # a model or kernel that cannot be captured: go on eagerly
            torch.cuda.synchronize()
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            self.failed = f"{type(ex).__name__}: {first}"
            log.warning("CUDA graphs off: capturing %s failed (%s)", what, self.failed)
            return self._eager(key)
        self.pool = graph.pool()
        self.graphs[key], self.outputs[key] = graph, out
        log.info("CUDA graphs: %s captured", what)
        graph.replay()  # the run being captured was recorded, not run
        return out
