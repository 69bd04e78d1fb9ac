"""Objectives without labels: reconstruct the input (autoencoder, denoising autoencoder), and
the evidence lower bound of a variational autoencoder.

Networks see normalized inputs, as every dlrun network does; reconstruction errors are reported
in the input's own scale (image pixels in [0, 1], a table's own units), so that they compare
with PCA or with any other tool.
"""

from __future__ import annotations

import math

import numpy as np
import torch  # imported when a network trains, never for --help
import torch.nn.functional as F

from dlrun.data.lazy import in_batches
from dlrun.objectives import Objective

EVAL_BATCH = 1024


class Reconstruction(Objective):
    """Autoencoder: mse (or l1) between the reconstruction and the clean input.

    With `denoise` the input is corrupted first (gaussian noise of std `noise`, or a share
    `noise` of the values masked to zero, in normalized units) and the clean input stays the
    target. On validation and test, with a fixed draw of the corruption: `loss` (the training
    loss), `recon_mse` (mean squared error per input value, in the input's own scale) and, when
    denoising, `noisy_mse` (the same error of the corrupted input itself: what denoising beats).
    """

    METRICS = ("loss", "recon_mse", "noisy_mse")  # noisy_mse only when denoising

    def __init__(self, loss: str, denoise: str, noise: float, scale: Scale):
        self.kind, self.denoise, self.noise, self.scale = loss, denoise, noise, scale
        self.metrics = self.METRICS if denoise != "none" else self.METRICS[:2]

    def corrupt(self, x, generator=None):
        if self.denoise == "gaussian":
            return x + self.noise * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        if self.denoise == "mask":
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.noise
            return x * keep
        return x

    def loss(self, model, batch: dict, phase: str = "main"):
        x = batch["x"]  # (B, *shape), normalized
        error = F.mse_loss if self.kind == "mse" else F.l1_loss
        return error(model(self.corrupt(x)).float(), x, reduction="none").flatten(1).mean(1)

    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        error = F.mse_loss if self.kind == "mse" else F.l1_loss
        generator = torch.Generator(device=x.device).manual_seed(0)  # the same draw each epoch
        sums = dict.fromkeys(self.metrics, 0.0)
        model.eval()
        with torch.no_grad():
            for _, xb in in_batches(x, EVAL_BATCH):
                given = self.corrupt(xb, generator)
                recon = model(given).float()
                sums["loss"] += error(recon, xb, reduction="none").flatten(1).mean(1).sum()
                sums["recon_mse"] += self.scale.squared_error(recon, xb).sum()
                if "noisy_mse" in sums:
                    sums["noisy_mse"] += self.scale.squared_error(given, xb).sum()
        return {k: float(v) / len(x) for k, v in sums.items()}

    def reconstruct(self, model, x):
        """Inputs (as given to the network, corrupted when denoising) and reconstructions,
        both in the input's own scale, for pictures."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        model.eval()
        with torch.no_grad():
            given = self.corrupt(x, generator)
            return self.scale.raw(given), self.scale.raw(model(given).float())

    def latent(self, model, x):
        model.eval()
        with torch.no_grad():
            return torch.cat([model.encode(xb).float() for _, xb in in_batches(x, EVAL_BATCH)])

    def pictures(self, model, x_test, prep):
        return pictures(self, model, x_test, prep)


class EvidenceBound(Objective):
    """Variational autoencoder: the negative evidence lower bound per sample, in nats,
    reconstruction negative log-likelihood + `beta` x KL(q(z|x) || N(0, I)).

    The likelihood: for images, Bernoulli on the pixels in [0, 1] (the decoder gives logits);
    for other data, a unit-variance Gaussian in normalized units. On validation and test, with a
    fixed draw of the latent: `loss` (the training loss, with beta), `elbo` (the bound itself,
    beta = 1, in nats per sample: higher is better), `recon_mse` (mean squared error per input
    value of the reconstruction from the latent's mean, in the input's own scale) and `kl`.
    """

    metrics = ("loss", "elbo", "recon_mse", "kl")

    def __init__(self, beta: float, scale: Scale, image: bool):
        self.beta, self.scale, self.image = beta, scale, image

    def nll(self, out, x):
        """Negative log-likelihood of each sample x (normalized) under the decoder's output."""
        if self.image:
            target = self.scale.raw(x).clamp(0, 1)
            return (
                F.binary_cross_entropy_with_logits(out, target, reduction="none").flatten(1).sum(1)
            )
        values = x[0].numel()
        return 0.5 * (out - x).pow(2).flatten(1).sum(1) + 0.5 * values * math.log(2 * math.pi)

    @staticmethod
    def kl(mean, logvar):
        return -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)  # (B,)

    def loss(self, model, batch: dict, phase: str = "main"):
        out, mean, logvar = model(batch["x"])
        return self.nll(out.float(), batch["x"]) + self.beta * self.kl(mean.float(), logvar.float())

    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        generator = torch.Generator(device=x.device).manual_seed(0)
        sums = dict.fromkeys(self.metrics, 0.0)
        model.eval()
        with torch.no_grad():
            for _, xb in in_batches(x, EVAL_BATCH):
                mean, logvar = (t.float() for t in model.encode(xb))
                noise = torch.randn(mean.shape, generator=generator, device=x.device)
                nll = self.nll(model.decode(mean + noise * (0.5 * logvar).exp()).float(), xb)
                kl = self.kl(mean, logvar)
                sums["loss"] += (nll + self.beta * kl).sum()
                sums["elbo"] -= (nll + kl).sum()
                sums["kl"] += kl.sum()
                recon = self.output(model.decode(mean).float())
                sums["recon_mse"] += self.scale.squared_error(recon, xb).sum()
        return {k: float(v) / len(x) for k, v in sums.items()}

    def output(self, out):
        """The decoder's output as a normalized input (images: the pixels' probabilities)."""
        return self.scale.normalized(torch.sigmoid(out)) if self.image else out

    def reconstruct(self, model, x):
        model.eval()
        with torch.no_grad():
            mean, _ = model.encode(x)
            return self.scale.raw(x), self.scale.raw(self.output(model.decode(mean).float()))

    def latent(self, model, x):
        model.eval()
        with torch.no_grad():
            return torch.cat([model.encode(xb)[0].float() for _, xb in in_batches(x, EVAL_BATCH)])

    def pictures(self, model, x_test, prep):
        return pictures(self, model, x_test, prep, samples=True)

    def samples(self, model, n: int, device):
        """n draws from the prior, decoded, in the input's own scale."""
        generator = torch.Generator(device=device).manual_seed(0)
        model.eval()
        with torch.no_grad():
            z = torch.randn((n, model.latent_size), generator=generator, device=device)
            return self.scale.raw(self.output(model.decode(z).float()))


SHOWN = 10  # test samples in reconstructions.png


def pictures(objective, model, x_test, prep, samples: bool = False):
    """reconstructions.png (test inputs above their reconstructions), latent.png (the test split
    in the 2-D latent, or a PCA of it, coloured by label) and, with `samples`, samples.png (64
    draws from the prior). Computed now, drawn when the run folder is written."""
    image = x_test.ndim == 4
    pair = objective.reconstruct(model, x_test[:SHOWN])  # in the input's own scale
    if not image:  # a table: in standard deviations of each feature, so every column shows
        pair = tuple(objective.scale.normalized(t) for t in pair)
    inputs, outputs = (t.cpu().numpy() for t in pair)
    z = objective.latent(model, x_test).cpu().numpy()
    axes = ("z1", "z2")
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        z = PCA(n_components=2, random_state=0).fit_transform(z)
        axes = ("first principal component", "second principal component")
    elif z.shape[1] == 1:
        z, axes = np.column_stack([z[:, 0], np.zeros(len(z))]), ("z1", "")
    drawn = objective.samples(model, 64, x_test.device).cpu().numpy() if samples else None
    spec, y_test = prep.spec, prep.splits["test"][1]
    classes = None
    if spec.task == "classification":
        classes = spec.class_labels
    name = prep.entry.name

    def draw(run_dir) -> None:
        from dlrun import plots

        where = "(top)" if image else "(left, in standard deviations of each feature)"
        what = f"test inputs {where} and their reconstructions"
        if getattr(objective, "denoise", "none") != "none":
            what = f"corrupted test inputs {where} and their denoised reconstructions"
        plots.save(
            plots.plot_reconstructions(inputs, outputs, f"{name}: {what}"),
            run_dir / "reconstructions.png",
        )
        title = f"{name}: the test split in its {model.latent_size}-d latent space"
        plots.save(plots.plot_latent(z, y_test, classes, title, axes), run_dir / "latent.png")
        if drawn is not None and drawn.ndim == 4:
            grid = plots.plot_image_grid(drawn, f"{name}: 64 draws from the prior, decoded")
            plots.save(grid, run_dir / "samples.png")

    return draw


class Scale:
    """Between the network's normalized inputs and the input's own scale (the training split's
    mean and standard deviation, shaped like one input)."""

    def __init__(self, norm, data_shape: tuple, input_shape: tuple, device):
        if norm is None:
            mean, std = np.zeros((1, *input_shape)), np.ones((1, *input_shape))
        else:  # statistics per channel or per feature, spread over one sample, then as the model reads it
            mean, std = (
                np.broadcast_to(s, (1, *data_shape)).reshape(1, *input_shape) for s in norm
            )
        self.mean = torch.tensor(np.array(mean, dtype=np.float32), device=device)  # (1, *shape)
        self.std = torch.tensor(np.array(std, dtype=np.float32), device=device)

    def raw(self, x):
        return x * self.std + self.mean

    def normalized(self, raw):
        return (raw - self.mean) / self.std

    def squared_error(self, a, b):
        """Mean squared difference per input value of each sample, in the input's own scale."""
        return ((a - b) * self.std).pow(2).flatten(1).mean(1)  # (B,)
