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
  A batch is a dict of device tensors: `x` always, `y` when the data has targets, `lengths`
  for padded sequences (`forward(model, batch)` calls the model with them).
- `mean_loss(model, batch, phase)`: the mean of `loss` over the batch, which the loop uses in
  one process; the base class computes it from `loss`, an objective may fuse it (cross-entropy's
  own mean is one kernel less per step than a per-sample loss and its mean).
- `grad_scale`: the loss is divided by it for the gradients only (regression learns a
  standardized target while its reported losses stay in the target's units).
- `metrics` and `evaluate(model, x, y, lengths=None)`: the validation / test numbers, host floats, once an
  epoch; "loss" comes first and the monitored metric is one of them.
- `pictures(model, x_test, prep)`: what it draws at the end (a confusion matrix,
  reconstructions, a latent space, samples).

A model names its objective when it registers (`objective="autoencoder"`); `objective_for`
builds it for a run.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str = "main"  # names its optimizer, scheduler and records (train_loss/<name>)
    module: str | None = None  # the sub-network it updates (a model attribute); None: all


class Objective(abc.ABC):
    """What every objective has; subclasses set `metrics` and write `loss` and `evaluate`."""

    phases: tuple[Phase, ...] = (Phase(),)
    metrics: tuple[str, ...] = ("loss",)
    grad_scale: float = 1.0

    @abc.abstractmethod
    def loss(self, model, batch: dict, phase: str):
        """Each sample's loss (B,), on the device."""

    def mean_loss(self, model, batch: dict, phase: str):
        return self.loss(model, batch, phase).mean()

    def step_correct(self):
        """The training batch's correctly classified samples in the step just taken, a 0-d
        device tensor (read with the epoch's other numbers); None: nothing to count."""
        return None

    def optim_config(self, phase: str, optim):
        """The optimizer settings of a phase (the `optim` group's, unless the objective has its
        own per network, as a GAN does)."""
        return optim

    def after_epoch(self, model, epoch: int, run_dir) -> None:  # noqa: B027 (a hook to override)
        """Called once an epoch is committed (a GAN draws its samples of the epoch here)."""

    @abc.abstractmethod
    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        """The objective's metrics of `model` on the inputs `x` (and labels `y`)."""

    def pictures(self, model, x_test, prep):
        """What the objective draws after training (the best checkpoint is loaded), as a
        function of the run folder; `x_test` is the test split's inputs on the device."""
        return lambda run_dir: None


def forward(model, batch: dict):
    """The model's output for a batch: padded sequences come with their lengths."""
    lengths = batch.get("lengths")
    return model(batch["x"]) if lengths is None else model(batch["x"], lengths)


# What trainer.loss may be for each objective (the first is what `auto` means).
LOSSES = {
    "classification": ("cross_entropy",),
    "regression": ("mse", "l1"),
    "autoencoder": ("mse", "l1"),
    "vae": ("elbo",),
    "gan": ("auto",),  # model.loss picks the GAN's losses
}
# The monitored metric of an objective when trainer.early_stopping.monitor is left at val_loss.
DEFAULT_MONITOR = {"gan": "val_fid"}


def objective_metrics(kind: str, task: str, model_cfg=None) -> tuple[str, ...]:
    """The validation metrics of an objective (kind: a model's `objective`), "loss" first."""
    from dlrun.metrics import metric_names

    if kind == "supervised":
        return tuple(metric_names(task))
    from dlrun.objectives.reconstruction import EvidenceBound, Reconstruction

    if kind == "vae":
        return EvidenceBound.metrics
    if kind == "gan":
        return (
            ("fid", "coverage", "diversity") if task == "classification" else ("fid", "diversity")
        )
    denoising = getattr(model_cfg, "denoise", "none") != "none"
    return Reconstruction.METRICS if denoising else Reconstruction.METRICS[:2]


def supervised_objective(conf, spec, y_train) -> Objective:
    """Classification or regression of the data's targets."""
    from dlrun.objectives.supervised import Classification, Regression
    from dlrun.weights import class_weights

    weights = class_weights(conf.trainer.class_weight, spec, y_train)  # regression: refused
    if spec.task == "classification":
        return Classification(conf.trainer.precision, weights)
    return Regression(conf.trainer.loss, conf.trainer.precision, y_train)


def objective_for(conf, prep, device, run_dir=None, write: bool = True) -> Objective:
    """The objective of a run's model (dlrun.runner.Prepared: data, model entry, splits).
    `run_dir` is where an objective keeps what it fits besides the model (a GAN's feature
    classifier), written there only with `write` (training, not dlrun-eval)."""
    kind = prep.entry.objective
    if kind == "supervised":
        return supervised_objective(conf, prep.spec, prep.splits["train"][1])
    if kind == "gan":
        from pathlib import Path

        from dlrun.objectives.adversarial import Adversarial, feature_classifier

        path = None if run_dir is None else Path(run_dir) / "checkpoints" / "features.pt"
        return Adversarial(conf.model, feature_classifier(prep, device, path, write), device)
    from dlrun.objectives.reconstruction import EvidenceBound, Reconstruction, Scale

    scale = Scale(prep.data.norm, prep.data.spec.shape, prep.spec.shape, device)
    if kind == "vae":
        return EvidenceBound(conf.model.beta, scale, image=prep.spec.kind == "image")
    return Reconstruction(conf.trainer.loss, conf.model.denoise, conf.model.noise, scale)
