"""Objectives: what one training step means, and what evaluation means.

The torch loop (`dlrun.training.fit_torch`) does not know what it trains. It owns batches,
placement, DDP, CUDA graphs, precision, clipping, optimizers and schedulers, checkpoints, resume,
early stopping, health and signals, once for every objective. An objective owns only:

- `phases`: the optimizer steps one training step makes, in order. Supervised learning and
  autoencoders have one (`Phase()`: every trainable parameter, one optimizer); a GAN has two (a
  discriminator step, then a generator step, each on its own sub-network and optimizer).
- `loss(model, batch, phase)`: the per-sample losses of a phase on a batch, shape (B,), on the
  device and without reading the host, so the loop can take the exact mean of a global batch
  under DDP or of a partial last batch, and capture every phase of a step in one CUDA graph.
  A batch is a dict of device tensors: `x` always, `y` when the data has targets.
- `mean_loss(model, batch, phase)`: the mean of `loss` over the batch, which the loop uses in
  one process; the base class computes it from `loss`, an objective may fuse it (cross-entropy's
  own mean is one kernel less per step than a per-sample loss and its mean).
- `grad_scale`: the loss is divided by it for the gradients only (regression learns a
  standardized target while its reported losses stay in the target's units).
- `metrics` and `evaluate(model, x, y)`: the validation / test numbers, host floats, once an
  epoch; "loss" comes first and the monitored metric is one of them.

`objective_for` picks the objective of a run from its data and config.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str = "main"  # names its optimizer, scheduler and records (train_loss/<name>)
    module: str | None = None  # the sub-network it updates (a model attribute); None: all


class Objective:
    """What every objective has; subclasses set `metrics` and write `loss` and `evaluate`."""

    phases: tuple[Phase, ...] = (Phase(),)
    metrics: tuple[str, ...] = ("loss",)
    grad_scale: float = 1.0

    def loss(self, model, batch: dict, phase: str):  # (B,) per sample, on the device
        raise NotImplementedError

    def mean_loss(self, model, batch: dict, phase: str):
        return self.loss(model, batch, phase).mean()

    def evaluate(self, model, x, y) -> dict[str, float]:
        raise NotImplementedError


def objective_for(conf, spec, y_train) -> Objective:
    """The objective of a run: classification or regression of the data's targets."""
    from dlrun.objectives.supervised import Classification, Regression

    if spec.task == "classification":
        return Classification(conf.trainer.precision)
    return Regression(conf.trainer.loss, conf.trainer.precision, y_train)
