"""The GAN objective: a discriminator step (or `d_steps` of them), then a generator step, each
with its own optimizer; quality measured offline, every epoch.

Quality: generated samples and real ones (the validation or test split) are compared in the
feature space of a classifier that dlrun trains on the same dataset's training split (a small
MLP, its last hidden layer's 128 features; saved as checkpoints/features.pt so that a resumed
run and dlrun-eval use the very same one):

- `fid`: the Fréchet distance between the two Gaussians fitted to those features (Heusel et al.
  2017's formula). It is a dataset-specific FID, not the Inception FID of papers: numbers
  compare between runs on the same data, not with published ones. Lower is better; monitored.
- `coverage`: the share of classes that the classifier finds among the generated samples (a
  class counts when it gets at least a fifth of its fair share). Falls when modes collapse.
- `diversity`: the mean distance between generated samples' features over that between real
  ones (about 1 when the generator is as varied as the data; near 0 when it repeats itself).

Data without classes (a regression table) is compared in its own normalized space instead, and
has no coverage.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch  # imported when a network trains, never for --help
import torch.nn.functional as F

from dlrun.objectives import Objective, Phase

log = logging.getLogger("dlrun")

GENERATED = 1000  # samples generated for each evaluation (or as many as the split, if more)
GRID = 64  # samples in samples.png and samples/epoch_K.png


class Adversarial(Objective):
    measure_untrained = True  # summary.json's `untrained`: the untrained generator's scores

    def __init__(self, cfg, features, device):
        self.kind, self.latent_size = cfg.loss, cfg.latent_size
        self.settings = {"disc": cfg.d_lr, "gen": cfg.g_lr}
        self.betas = list(cfg.betas)
        self.phases = (Phase("disc", "discriminator"),) * cfg.d_steps + (Phase("gen", "generator"),)
        self.features = features  # Features
        self.metrics = (
            ("fid", "coverage", "diversity") if features.classes else ("fid", "diversity")
        )
        self.device = device

    def optim_config(self, phase: str, optim):
        """Each network's own learning rate, and Adam's betas from the model's settings."""
        changes = {"lr": self.settings[phase]}
        if hasattr(optim, "betas"):
            changes["betas"] = self.betas
        return dataclasses.replace(optim, **changes)

    def loss(self, model, batch: dict, phase: str):
        real = batch["x"]  # (B, *shape), normalized
        z = torch.randn(real.shape[0], self.latent_size, device=real.device)
        if phase == "disc":
            with torch.no_grad():
                fake = model.generate(z)
            d_real, d_fake = model(real).float(), model(fake).float()
            if self.kind == "hinge":
                return F.relu(1 - d_real) + F.relu(1 + d_fake)
            return F.softplus(-d_real) + F.softplus(d_fake)  # -log D(x) - log(1 - D(G(z)))
        d_fake = model(model.generate(z)).float()
        if self.kind == "hinge":
            return -d_fake
        return F.softplus(-d_fake)  # the non-saturating loss: -log D(G(z))

    def evaluate(self, model, x, y, lengths=None) -> dict[str, float]:
        fake = self.generate(model, max(GENERATED, len(x)))
        real_f, fake_f = self.features(x), self.features(fake)
        scores = {"fid": frechet(real_f, fake_f), "diversity": spread(fake_f) / spread(real_f)}
        if self.features.classes:
            counts = np.bincount(self.features.classify(fake), minlength=self.features.classes)
            fair = len(fake) / self.features.classes
            scores["coverage"] = float((counts >= fair / 5).mean())
        return {k: scores[k] for k in self.metrics}

    def generate(self, model, n: int, seed: int = 0):
        """n samples from fixed latent vectors (the same every epoch), normalized."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn((n, self.latent_size), generator=generator, device=self.device)
        model.eval()
        with torch.no_grad():
            return torch.cat([model.generate(part) for part in z.split(1024)])

    def grid(self, model):
        """GRID images from fixed latent vectors, pixels in [0, 1] (None for tables)."""
        if not model.image:
            return None
        generator = torch.Generator(device=self.device).manual_seed(1)
        z = torch.randn((GRID, self.latent_size), generator=generator, device=self.device)
        model.eval()
        with torch.no_grad():
            return model.pixels(z).float().cpu().numpy()

    def after_epoch(self, model, epoch: int, run_dir) -> None:
        """samples/epoch_K.png: the same latent vectors every epoch, to watch training go."""
        images = self.grid(model)
        if images is None:
            return
        from dlrun import plots

        (run_dir / "samples").mkdir(exist_ok=True)
        title = f"generated samples after epoch {epoch}"
        plots.save(plots.plot_image_grid(images, title), run_dir / "samples" / f"epoch_{epoch}.png")

    def pictures(self, model, x_test, prep):
        """samples.png: a grid of generated images; for a table, generated and test rows in
        the test rows' first two principal components."""
        images, name = self.grid(model), prep.entry.name
        if images is None:
            from sklearn.decomposition import PCA

            real = x_test.flatten(1).double().cpu().numpy()
            fake = self.generate(model, len(real)).flatten(1).double().cpu().numpy()
            pca = PCA(n_components=2, random_state=0).fit(real)
            points = (pca.transform(real), pca.transform(fake))

        def draw(run_dir) -> None:
            from dlrun import plots

            if images is not None:
                figure = plots.plot_image_grid(images, f"{name}: generated samples (best epoch)")
            else:
                title = f"{name}: test rows and as many generated ones (the test rows' 2-D PCA)"
                figure = plots.plot_real_and_generated(*points, title)
            plots.save(figure, run_dir / "samples.png")

        return draw


class Features:
    """The feature space generation is judged in: a classifier trained on the training split
    (its last hidden layer), or for data without classes the normalized inputs themselves."""

    def __init__(self, net, classes: int):
        self.net, self.classes = net, classes

    def __call__(self, x) -> np.ndarray:
        if self.net is None:
            return x.flatten(1).double().cpu().numpy()
        with torch.no_grad():
            return torch.cat([self.net[:-1](part) for part in x.split(1024)]).double().cpu().numpy()

    def classify(self, x) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([self.net(part).argmax(1) for part in x.split(1024)]).cpu().numpy()


def feature_classifier(prep, device, path, write: bool = True) -> Features:
    """The classifier of `Features`: loaded from `path` (checkpoints/features.pt) when a run
    has one, else trained on the training split's labels (seeded; the run's own random
    generators untouched) and, with `write`, saved there."""
    from torch import nn

    from dlrun.checkpoints import load_checkpoint, save_checkpoint

    spec = prep.spec
    if spec.task != "classification":
        return Features(None, 0)
    width = math.prod(spec.shape)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()),
        nn.Linear(128, spec.num_classes),
    ).to(device)
    if path is not None and path.is_file():
        net.load_state_dict(load_checkpoint(path, map_location=str(device))["model"])
        return Features(net.eval(), spec.num_classes)
    x = torch.as_tensor(prep.splits["train"][0], device=device)
    y = torch.as_tensor(prep.splits["train"][1], device=device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        epochs = max(3, min(15, math.ceil(30_000 / len(x))))
        for _ in range(epochs):
            for idx in torch.randperm(len(x), device=device).split(128):
                optimizer.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                optimizer.step()
    net.eval()
    x_val = torch.as_tensor(prep.splits["val"][0], device=device)
    with torch.no_grad():
        accuracy = (net(x_val).argmax(1).cpu().numpy() == prep.splits["val"][1]).mean()
    log.info(
        "generation is judged in the features of a classifier trained on the training split "
        "(%d epochs, validation accuracy %.3f)",
        epochs,
        accuracy,
    )
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {"model": net.state_dict(), "val_accuracy": float(accuracy)})
    return Features(net, spec.num_classes)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (rows):
    |mu_a - mu_b|^2 + tr(A + B - 2 (A B)^(1/2)), the trace of the root taken as the sum of the
    square roots of the eigenvalues of A^(1/2) B A^(1/2) (symmetric, so stable even when the
    covariances are singular, as they are for features some samples never use)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace
    return float(max(distance, 0.0))


def spread(features: np.ndarray, at_most: int = 500) -> float:
    """Mean pairwise distance between (up to `at_most`) feature rows."""
    rows = torch.as_tensor(features[:at_most])
    distances = torch.cdist(rows, rows)
    n = len(rows)
    return float(distances.sum() / max(n * (n - 1), 1))
