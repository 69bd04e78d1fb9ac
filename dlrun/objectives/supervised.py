"""Supervised objectives: classes (cross-entropy) and targets (mse or l1)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F  # imported when a network trains, never for --help

from dlrun.objectives import Objective, forward


def weighted(losses, batch: dict):
    """Each sample's loss times its row's weight (data.sample_weight), when the batch has one."""
    return losses * batch["w"] if "w" in batch else losses


class Classification(Objective):
    """Cross-entropy on (x, y); accuracy, macro F1 and log-loss on validation and test."""

    def __init__(self, precision: str = "32", weights: np.ndarray | None = None):
        import torch

        from dlrun.metrics import metric_names

        self.precision = precision
        self.metrics = tuple(metric_names("classification"))
        # trainer.class_weight: each sample's loss times its class's weight (the validation and
        # test scores are not weighted)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

    # set by the loop when it records train_accuracy: each step's loss also counts the batch's
    # correct predictions (argmax and a sum on the device; read once an epoch)
    counting = False
    correct = None

    def _logits(self, model, batch: dict):
        logits = forward(model, batch).float()  # (B, K)
        if self.counting:
            self.correct = (logits.detach().argmax(dim=1) == batch["y"]).sum()
        return logits

    def step_correct(self):
        return self.correct if self.counting else None

    def _weights(self, device):
        if self.weights.device != device:  # moved once, before any step is captured
            self.weights = self.weights.to(device)
        return self.weights

    def loss(self, model, batch: dict, phase: str = "main"):
        logits = self._logits(model, batch)
        losses = F.cross_entropy(logits, batch["y"], reduction="none")  # (B,)
        if self.weights is not None:
            losses = losses * self._weights(logits.device)[batch["y"]]
        return weighted(losses, batch)

    def mean_loss(self, model, batch: dict, phase: str = "main"):
        if self.weights is not None or "w" in batch:  # the mean of the weighted losses
            return self.loss(model, batch, phase).mean()
        return F.cross_entropy(self._logits(model, batch), batch["y"])

    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        from dlrun.metrics import compute_metrics

        outputs = self.outputs(model, x, lengths)
        self.last = (x, outputs)  # the test split's, for `pictures` right after scoring
        return compute_metrics("classification", y, outputs)

    def outputs(self, model, x, lengths=None):
        from dlrun.training import predict

        return predict(model, x, "classification", self.precision, lengths=lengths)  # (N, K)

    def pictures(self, model, x_test, prep):
        from dlrun import plots

        lengths = None
        if prep.lengths is not None:
            import torch

            lengths = torch.as_tensor(prep.lengths["test"], device=x_test.device)
        last = getattr(self, "last", None)
        if last is not None and last[0] is x_test:  # just scored: the same model's outputs
            outputs = last[1]
        else:
            outputs = self.outputs(model, x_test, lengths)
        y_test = prep.splits["test"][1]
        return lambda run_dir: plots.save_predictions(run_dir, prep.spec, y_test, outputs)


class Regression(Objective):
    """Mean squared (or absolute) error of each sample's targets; rmse, mae and r2.

    The network predicts in the target's units (dlrun.nn.TargetScaled). The loss is divided by
    the training targets' variance (or standard deviation for l1) for the gradients only: they
    are then those of a standardized target, so a learning rate means the same whatever the
    units, while every reported loss stays in the target's units.
    """

    def __init__(self, loss: str, precision: str, y_train: np.ndarray):
        import torch

        from dlrun.metrics import metric_names

        self.kind, self.precision = loss, precision
        self.metrics = tuple(metric_names("regression"))
        y = torch.as_tensor(np.asarray(y_train, dtype=np.float32)).reshape(len(y_train), -1)
        std = y.std(dim=0).clamp(min=1e-8)  # (T,)
        self.grad_scale = float((std**2).mean() if loss == "mse" else std.mean())

    def loss(self, model, batch: dict, phase: str = "main"):
        out = forward(model, batch).float()  # (B, T)
        error = F.mse_loss if self.kind == "mse" else F.l1_loss
        losses = error(out, batch["y"].reshape(out.shape), reduction="none").mean(dim=1)  # (B,)
        return weighted(losses, batch)

    def mean_loss(self, model, batch: dict, phase: str = "main"):
        if "w" in batch:  # data.sample_weight
            return self.loss(model, batch, phase).mean()
        out = forward(model, batch).float()  # (B, T): every sample has T values, so one mean
        error = F.mse_loss if self.kind == "mse" else F.l1_loss
        return error(out, batch["y"].reshape(out.shape))

    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        from dlrun.metrics import compute_metrics
        from dlrun.training import predict

        outputs = predict(model, x, "regression", self.precision, lengths=lengths)
        self.last = (x, outputs)  # the test split's, for `pictures` right after scoring
        return compute_metrics("regression", y, outputs, self.kind)

    def pictures(self, model, x_test, prep):
        from dlrun import plots
        from dlrun.training import predict

        last = getattr(self, "last", None)
        if last is not None and last[0] is x_test:  # just scored: the same model's outputs
            outputs = last[1]
        else:
            lengths = None
            if prep.lengths is not None:
                import torch

                lengths = torch.as_tensor(prep.lengths["test"], device=x_test.device)
            outputs = predict(model, x_test, "regression", self.precision, lengths=lengths)
        y_test = prep.splits["test"][1]
        return lambda run_dir: plots.save_predictions(run_dir, prep.spec, y_test, outputs)
