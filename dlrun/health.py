"""Training health: notice the classic ways a network fails to train, and say what to change.

Measured once per epoch on a fixed probe batch from the validation split (cheap, no per-step
host synchronisation): the fraction of dead ReLU units per layer, the gradient reaching the first
time steps of a sequence compared with the last ones, per-layer gradient norms, and the size of
each layer's update relative to its weights. With the loop's own numbers (gradient norm before
clipping, train and validation loss) they give findings such as:

    41% of the units of layer 1 are dead since epoch 2 (optim.lr=0.5 with relu):
    try optim.lr=0.05 or model.activation=leaky_relu
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger("dlrun")

PROBE = 256  # samples in the probe batch
# ... or fewer for large inputs, down to 16: at most this many bytes of float32 inputs (its
# activations and gradients take many times that; 224x224 RGB images: 16 samples, not 256)
PROBE_BYTES = 2**23
PROBE_WARMUP = 1  # eager probes before it is captured as a CUDA graph


@dataclass
class Finding:
    kind: str  # dead_relu, vanishing_gradients, exploding_gradients, overfitting, plateau
    message: str  # what was seen, since when
    since_epoch: int
    confidence: str  # high, medium
    advice: str  # the change to try: a config key and a value

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "since_epoch": self.since_epoch,
            "confidence": self.confidence,
            "advice": self.advice,
        }


@dataclass
class Monitor:
    """Hooks on a network; `measure()` at the end of each epoch returns the health numbers."""

    net: object
    batch: dict  # the probe batch: {"x": (B, *shape), "y": ...} on the device
    loss: object  # batch -> per-sample losses (B,): the objective's, for its last phase
    sequence: bool
    relus: dict = field(default_factory=dict)
    _dead: dict = field(default_factory=dict)
    _before: dict = field(default_factory=dict)
    _replay: object = None  # on CUDA: the probe, captured as a CUDA graph after its first run

    def __post_init__(self):
        from torch import nn

        for name, module in self.net.named_modules():
            if isinstance(module, nn.ReLU):
                self.relus[name] = module
        self.x_probe = self.batch["x"]
        self.follow_layers()

    def follow_layers(self) -> None:
        """Measure the layers that train now (frozen ones have no gradient to measure); called
        again when frozen layers start training (trainer.unfreeze_at_epoch), before the epoch."""
        from torch import nn

        self.layers = {
            n: m.weight
            for n, m in self.net.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter)
            and m.weight.ndim > 1
            and m.weight.requires_grad
        }
        self._before, self._replay = {}, None  # new copies; a probe graph captured anew
        self.snapshot()

    def snapshot(self) -> None:
        import torch

        weights = [w.detach() for w in self.layers.values()]
        if self._before:  # reuse the copies: no new allocation each epoch
            torch._foreach_copy_(list(self._before.values()), weights)
        else:
            self._before = {n: w.clone() for n, w in zip(self.layers, weights, strict=True)}

    def measure(self) -> dict[str, float]:
        """The epoch's numbers: computed on the device, read with one synchronisation. On CUDA
        the probe is captured as a CUDA graph after its first run and replayed after that."""
        if not self.x_probe.is_cuda:
            names, packed = self._probe()
        else:
            if self._replay is None:
                from dlrun.graphs import GraphedSteps

                self._replay = GraphedSteps(
                    lambda _: self._probe(), self.x_probe.device, PROBE_WARMUP, "the health probe"
                )
            names, packed = self._replay(0)
        return dict(zip(names, packed.tolist(), strict=True))

    def _probe(self):
        """Forward and backward of the probe batch, every number of the epoch in one tensor:
        (names, packed values). Reads nothing back to the host (it may be captured)."""
        import torch
        from torch import nn

        values: dict[str, object] = {}  # name -> 0-d device tensor
        handles = [m.register_forward_hook(self._dead_hook(n)) for n, m in self.relus.items()]
        modes = [(m, m.training) for m in self.net.modules()]  # frozen batch norms: eval
        self.net.eval()
        # cuDNN's RNN kernels have no backward in eval mode. A recurrent layer without dropout
        # computes the same in train mode, so it runs there; one with dropout runs natively.
        rnns = [m for m in self.net.modules() if isinstance(m, nn.RNNBase)]
        for m in rnns:
            m.train(m.dropout == 0 or m.num_layers == 1)
        native = any(m.training is False for m in rnns) and self.x_probe.is_cuda
        # the gradient reaching each time step needs inputs that have one (not token ids)
        sequence = self.sequence and self.x_probe.is_floating_point()
        x = self.x_probe.clone().requires_grad_(sequence)
        try:
            with torch.enable_grad(), torch.backends.cudnn.flags(enabled=not native):
                loss = self.loss({**self.batch, "x": x}).mean()
                grads = torch.autograd.grad(
                    loss,
                    [x, *self.layers.values()] if sequence else list(self.layers.values()),
                    allow_unused=True,
                )
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
        if sequence:
            per_step = grads[0].detach().flatten(2).norm(dim=2).mean(dim=0)  # (T,)
            quarter = max(len(per_step) // 4, 1)
            first, last = per_step[:quarter].mean(), per_step[-quarter:].mean()
            values["health/grad_first_last_ratio"] = first / last.clamp(min=1e-30)
            grads = grads[1:]
        named = [(n, g) for n, g in zip(self.layers, grads, strict=True) if g is not None]
        for (name, _), norm in zip(named, torch._foreach_norm([g for _, g in named]), strict=True):
            values[f"health/grad_norm/{name}"] = norm
        weights = [w.detach() for w in self.layers.values()]
        deltas = torch._foreach_norm(torch._foreach_sub(weights, list(self._before.values())))
        for name, delta, norm in zip(
            self.layers, deltas, torch._foreach_norm(weights), strict=True
        ):
            values[f"health/update_ratio/{name}"] = delta / norm.clamp(min=1e-12)
        for name, frac in self._dead.items():
            values[f"health/dead_relu_frac/{name}"] = frac
        if self._dead:
            values["health/dead_relu_frac"] = torch.stack(list(self._dead.values())).max()
        self._dead = {}
        self.snapshot()
        return list(values), torch.stack([v.float().reshape(()) for v in values.values()])

    def _dead_hook(self, name: str):
        def hook(module, inputs, output):
            alive = (
                (output.detach() > 0).flatten(2).any(dim=2)
                if output.ndim > 2
                else output.detach() > 0
            )
            self._dead[name] = (~alive.any(dim=0)).float().mean()  # units dead on every sample

        return hook


def findings(history: list[dict], conf, best_epoch: int | None = None) -> list[Finding]:
    """What the per-epoch records show, each with the change to try. `best_epoch` is the epoch
    checkpoints/best.pt holds (by the monitored metric), which a finding may name."""
    if not history:
        return []
    checks = (
        dead_relu(history, conf),
        vanishing_gradients(history, conf),
        exploding_gradients(history, conf),
        plateau(history, conf),
        overfitting(history, conf, best_epoch),
        mode_collapse(history, conf),
        discriminator_wins(history, conf),
    )
    return [found for found in checks if found is not None]


def dead_relu(history: list[dict], conf) -> Finding | None:
    dead = [r.get("health/dead_relu_frac", 0.0) for r in history]
    if dead[-1] < 0.3:
        return None
    lr, activation = conf.optim.lr, getattr(conf.model, "activation", None)
    since = next(r["epoch"] for r in history if r.get("health/dead_relu_frac", 0) >= 0.3)
    layers = {
        k.rsplit("/", 1)[-1]: v
        for k, v in history[-1].items()
        if k.startswith("health/dead_relu_frac/")
    }
    worst = max(layers, key=layers.get)
    return Finding(
        "dead_relu",
        f"{layers[worst]:.0%} of the units of layer {worst} are dead since epoch {since} "
        f"(optim.lr={lr:g} with {activation or 'relu'})",
        since,
        "high" if dead[-1] >= 0.5 else "medium",
        f"try optim.lr={lr / 10:g}"
        + (" or model.activation=leaky_relu" if hasattr(conf.model, "activation") else ""),
    )


def vanishing_gradients(history: list[dict], conf) -> Finding | None:
    ratios = [
        r["health/grad_first_last_ratio"] for r in history if "health/grad_first_last_ratio" in r
    ]
    if not (len(ratios) >= 2 and max(ratios[-2:]) < 1e-3 and conf.model.name == "rnn"):
        return None
    return Finding(
        "vanishing_gradients",
        f"the gradient reaching the first time steps is {ratios[-1]:.1e} of that at the last ones "
        f"since epoch {history[0]['epoch']}: vanishing gradients in a plain RNN",
        history[0]["epoch"],
        "high",
        "try model=lstm or model=gru",
    )


def exploding_gradients(history: list[dict], conf) -> Finding | None:
    def peak_of(r):
        value = r.get("grad_norm_max", 0.0)
        return value if math.isfinite(value) else math.inf

    peak = max(history, key=peak_of)
    value = peak.get("grad_norm_max", 0)
    if conf.trainer.clip.max_norm is not None or (value <= 1e3 and math.isfinite(value)):
        return None
    return Finding(
        "exploding_gradients",
        f"the gradient norm reached {value:.1e} in epoch {peak['epoch']} with clipping off",
        peak["epoch"],
        "high",
        "try trainer.clip.max_norm=1.0",
    )


def plateau(history: list[dict], conf) -> Finding | None:
    if len(history) < 5 or "train_loss" not in history[0]:
        return None
    lr = conf.optim.lr
    first = history[0]["train_loss"]
    recent = [r["train_loss"] for r in history[-5:]]
    moving = max(recent) - min(recent) >= 0.01 * max(recent)
    if moving or recent[-1] <= 0.8 * first:  # it moves, or it fell by a fifth or more
        return None
    updates = [v for k, v in history[-1].items() if k.startswith("health/update_ratio/")]
    tiny = bool(updates) and max(updates) < 1e-4
    return Finding(
        "plateau",
        f"the training loss has barely moved since epoch {history[-5]['epoch']} "
        f"({recent[-1]:.4g}, from {first:.4g} at epoch 1): the model is not learning"
        + (
            f"; each epoch changes the weights by under {max(updates):.0e} of their size"
            if tiny
            else ""
        ),
        history[-5]["epoch"],
        "high" if tiny else "medium",
        f"try optim.lr={lr * 10:g}" + ("" if tiny else " or another model.activation / optimizer"),
    )


def overfitting(history: list[dict], conf, best_epoch: int | None) -> Finding | None:
    if "val_loss" not in history[0] or "train_loss" not in history[0]:
        return None
    rising = 0
    for prev, cur in zip(history, history[1:], strict=False):
        worse = cur["val_loss"] > prev["val_loss"] and cur["train_loss"] < prev["train_loss"]
        rising = rising + 1 if worse else 0
    best = min(history, key=lambda r: r["val_loss"])  # the lowest validation loss
    if not (
        rising >= 4
        or (
            len(history) - best["epoch"] >= 5
            and history[-1]["val_loss"] > 1.2 * best["val_loss"]
            and history[-1]["train_loss"] < best["train_loss"]
        )
    ):
        return None
    dropout = getattr(conf.model, "dropout", None)
    advice = (
        f"try model.dropout={max(0.2, (dropout or 0) + 0.2):.1f} or more data"
        if dropout is not None
        else "try more data or a smaller model"
    )
    monitor = conf.trainer.early_stopping.monitor
    kept = best_epoch if best_epoch is not None else best["epoch"]
    return Finding(
        "overfitting",
        f"validation loss has risen since epoch {best['epoch']} while training loss fell: the model "
        f"is overfitting; the best checkpoint keeps epoch {kept} (by {monitor})",
        best["epoch"] + 1,
        "high" if rising >= 4 else "medium",
        advice,
    )


def mode_collapse(history: list[dict], conf) -> Finding | None:
    """A GAN whose samples repeat themselves: their features vary far less than the data's
    (val_diversity), or the classes it covers fell (val_coverage)."""
    if "val_diversity" not in history[-1]:
        return None
    diversity = history[-1]["val_diversity"]
    coverage = [r["val_coverage"] for r in history if "val_coverage" in r]
    fell = bool(coverage) and max(coverage) - coverage[-1] >= 0.3
    if diversity >= 0.3 and not fell:
        return None
    seen = (
        f"the generated samples vary {diversity:.2f} times as much as the data's"
        if diversity < 0.3
        else f"the share of classes it generates fell from {max(coverage):.2f} to {coverage[-1]:.2f}"
    )
    return Finding(
        "mode_collapse",
        f"{seen} at epoch {history[-1]['epoch']}: the generator collapsed onto a few modes",
        history[-1]["epoch"],
        "high" if diversity < 0.1 else "medium",
        f"try model.loss=hinge or model.g_lr={conf.model.g_lr / 2:g}",
    )


def discriminator_wins(history: list[dict], conf) -> Finding | None:
    """A GAN whose discriminator tells every sample apart for several epochs: the generator's
    gradients vanish and it stops improving."""
    losses = [r["train_loss/disc"] for r in history if "train_loss/disc" in r]
    if len(losses) < 3 or max(losses[-3:]) >= 0.05:
        return None
    since = history[-3]["epoch"]
    return Finding(
        "discriminator_wins",
        f"the discriminator's loss has stayed under 0.05 since epoch {since} "
        f"({losses[-1]:.3g}): it wins outright and the generator learns little",
        since,
        "high",
        f"try model.d_lr={conf.model.d_lr / 4:g}"
        + (" or model.d_steps=1" if getattr(conf.model, "d_steps", 1) > 1 else "")
        + " or model.loss=hinge",
    )
