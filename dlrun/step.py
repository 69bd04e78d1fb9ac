"""One training step of any objective, eager or captured as a CUDA graph.

For each phase of the objective, in order: its per-sample losses on the batch (the mean over
the global batch, exact under DDP and for a partial last batch), backward (fp16-scaled when
asked), the gradient norm before clipping, clipping, and its optimizer's update. The step's
loss and norm of each phase are written into the epoch's device buffers, so the loop reads the
host once an epoch (`epoch_numbers`).
"""

from __future__ import annotations

import torch  # this module is imported when a network trains, never for --help
from torch.nn.utils import clip_grad_value_, clip_grads_with_norm_, get_total_norm

from dlrun.devices import autocast


class Steps:
    def __init__(self, model, objective, state, batches, conf, device, world: int, channels_last):
        self.model, self.objective, self.state, self.batches = model, objective, state, batches
        self.tcfg, self.device, self.world = conf.trainer, device, world
        self.channels_last = channels_last
        self.phases = [p.name for p in objective.phases]  # in order, a name maybe repeated
        # per-step numbers stay on the device until the epoch's one synchronisation
        shape = (len(self.phases), batches.steps)
        self.losses = torch.zeros(shape, device=device)  # each step's mean loss, by phase
        self.norms = torch.zeros(shape, device=device)  # gradient norm before clipping
        # classes: each step's correctly classified training samples (train_accuracy)
        self.correct = None
        if hasattr(objective, "counting") and len(set(self.phases)) == 1:
            objective.counting = True
            self.correct = torch.zeros(batches.steps, device=device)
        self.graphs = None
        self.at = None  # the step being taken, a (1,) device index (the counter when captured)
        if self.correct is not None:  # each eager step's index, sliced without a kernel
            self.steps_index = torch.arange(batches.steps, device=device)
        if state.graphed:
            self._capture_setup()

    def train_step(self, batch: dict, global_batch: int):
        """Every phase once on this rank's part of a global batch; (losses, norms) as (P,)
        device tensors, with no host synchronisation (the batch's correct predictions, when
        counted, go into `self.correct` at `self.at`)."""
        if self.channels_last and batch["x"].ndim == 4:
            batch = {**batch, "x": batch["x"].contiguous(memory_format=torch.channels_last)}
        tcfg, scaler, graphed = self.tcfg, self.state.scaler, self.state.graphed
        losses, norms = [], []
        for phase in self.phases:
            optimizer, params = self.state.optimizers[phase], self.state.params[phase]
            optimizer.zero_grad(set_to_none=not graphed)  # captured: gradients stay in place
            with autocast(self.device, tcfg.precision, cache=not graphed):
                if self.world == 1:
                    loss = self.objective.mean_loss(self.model, batch, phase)
                else:  # a rank's part of the global mean: DDP's average then gives the exact one
                    per_sample = self.objective.loss(self.model, batch, phase)  # (B,)
                    loss = per_sample.sum() * (self.world / global_batch)
            scaled = loss / self.objective.grad_scale if self.objective.grad_scale != 1.0 else loss
            if scaler.is_enabled():  # fp16: scaled backward, then true gradients
                scaler.scale(scaled).backward()
                scaler.unscale_(optimizer)
            else:
                scaled.backward()
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
            losses.append(loss.detach())
            norms.append(norm.to(self.norms.dtype))
        if self.correct is not None:  # a device copy, no sync: read with the epoch's numbers
            self.correct.index_copy_(0, self.at, self.objective.step_correct().reshape(1).float())
        if len(losses) == 1:  # views, no kernel: the common step stays as lean as it was
            return losses[0].reshape(1), norms[0].reshape(1)
        return torch.stack(losses), torch.stack(norms)

    def run_epoch(self, perm, stop, on_step=None) -> int:
        """The epoch's steps in the order `perm`; returns how many ran (fewer when a signal
        came: the step under way finishes first). `on_step` (dlrun.report.epoch_progress) is
        told how far the epoch is at most every `on_step.every` seconds, never synchronising
        between those times."""
        done = 0
        tell = Progress(on_step, self)
        if self.graphs is not None:  # replayed: the graph reads the order and the counter
            self.order.copy_(perm)
            self.counter.zero_()
            for size in self.batches.sizes:
                self.graphs(size)
                done += 1
                self.state.after_step()
                tell(done)
                if stop.signum is not None and self.world == 1:  # ranks agree once an epoch
                    break
            return done
        for step, (batch, size) in enumerate(self.batches.epoch(perm)):
            if self.correct is not None:
                self.at = self.steps_index[step : step + 1]
            losses, norms = self.train_step(batch, size)
            self.losses.select(1, step).copy_(losses)  # small device copies, no sync
            self.norms.select(1, step).copy_(norms)
            done += 1
            self.state.after_step()
            tell(done)
            if stop.signum is not None and self.world == 1:
                break
        return done

    def epoch_numbers(self, done: int) -> dict:
        """The epoch's one host synchronisation: each phase's mean training loss (over every
        sample of the epoch; DDP ranks each hold their part of every mean) and its gradient
        norms. Keys: train_loss, grad_norm, grad_norm_max, clip_frac (one phase), or the same
        with /<phase> (several); train_accuracy for classes."""
        import torch

        from dlrun import distributed

        sizes = torch.tensor(self.batches.sizes, dtype=torch.float32, device=self.device)
        world = self.world if self.world > 1 else 1
        names = list(dict.fromkeys(self.phases))
        numbers = {}
        for name in names:
            rows = [p for p, phase in enumerate(self.phases) if phase == name]
            # a phase run k times a step: the mean of its k losses, every norm
            total = distributed.all_sum((self.losses[rows] * sizes).sum() / len(rows)) / world
            norms = self.norms[rows, :done].reshape(-1)
            finite = torch.isfinite(norms)
            peak = norms[finite].max() if finite.any() else norms.max()
            suffix = "" if len(names) == 1 else f"/{name}"
            numbers[f"train_loss{suffix}"] = (total / self.batches.seen).item()
            numbers[f"grad_norm{suffix}"] = norms.mean().item()
            if self.tcfg.clip.max_norm is not None:
                share = (norms > self.tcfg.clip.max_norm).float().mean().item()
                numbers[f"clip_frac{suffix}"] = share
            numbers[f"grad_norm_max{suffix}"] = peak.item()
        if self.correct is not None:  # the training batches as they trained (dropout on)
            correct = distributed.all_sum(self.correct[:done].sum())
            numbers["train_accuracy"] = (correct / self.batches.seen).item()
        return numbers

    def first_nonfinite(self) -> int:
        """The 1-based step whose loss first was NaN or infinite (read when a run diverges)."""
        import torch

        bad = (~torch.isfinite(self.losses).all(dim=0)).nonzero()
        return int(bad[0, 0]) + 1 if len(bad) else self.batches.steps

    @property
    def captured(self) -> bool:
        return self.graphs is not None and bool(self.graphs.graphs) and not self.graphs.failed

    def _capture_setup(self) -> None:
        """Static buffers a captured step reads (the epoch's order and a step counter on the
        device, which the graph itself advances), and the graphs, one per batch size."""
        import torch

        from dlrun.graphs import GraphedSteps

        batches = self.batches
        self.order = torch.zeros(batches.n, dtype=torch.long, device=self.device)
        self.counter = torch.zeros(1, dtype=torch.long, device=self.device)
        full = batches.seen // batches.batch  # full batches an epoch
        rows = self.order[: full * batches.batch].view(full, batches.batch)  # step k: row k

        def body(size: int) -> None:
            # a full batch picks its row by the counter; the last partial batch is the tail
            if size == batches.batch:
                idx = rows.index_select(0, self.counter).view(-1)
            else:
                idx = self.order[full * batches.batch :]
            self.at = self.counter
            losses, norms = self.train_step(batches.fetch(idx), size)
            self.losses.index_copy_(1, self.counter, losses.reshape(-1, 1))
            self.norms.index_copy_(1, self.counter, norms.reshape(-1, 1))
            self.counter.add_(1)

        self.graphs = GraphedSteps(body, self.device)


class Progress:
    """How far an epoch is, told to `on_step(done, total, samples, elapsed, loss)` at most every
    `on_step.every` seconds: a clock read per step, and the running loss read from the device
    only when it is shown."""

    def __init__(self, on_step, steps: Steps):
        import time

        self.on_step, self.steps, self.clock = on_step, steps, time.perf_counter
        self.started = self.clock()
        self.every = getattr(on_step, "every", 0.25)
        self.next = self.started + self.every

    def __call__(self, done: int) -> None:
        if self.on_step is None:
            return
        now = self.clock()
        if now < self.next:
            return
        self.next = now + self.every
        steps = self.steps
        sizes = steps.batches.sizes[:done]
        samples = sum(sizes)

        def loss() -> float:
            import torch

            weights = torch.tensor(sizes, dtype=torch.float32, device=steps.device)
            return float((steps.losses[0, :done] * weights).sum() / max(1, samples))

        self.on_step(done, steps.batches.steps, samples, now - self.started, loss)
