"""Objectives: each one's step on tiny data, and autoencoders / VAEs through the whole runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import read_metrics, sigint_after_epoch, train
from dlrun.errors import ConfigError, Interrupted


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


def scale(shape):
    from dlrun.objectives.reconstruction import Scale

    norm = (
        np.full((1, *shape), 0.5, dtype=np.float32),
        np.full((1, *shape), 0.25, dtype=np.float32),
    )
    return Scale(norm, shape, shape, torch.device("cpu"))


def test_supervised_losses_are_per_sample_and_their_fused_mean_agrees():
    from dlrun.objectives.supervised import Classification, Regression

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    batch = {"x": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    objective = Classification()
    per_sample = objective.loss(net, batch)
    assert per_sample.shape == (6,)
    assert torch.allclose(per_sample.mean(), objective.mean_loss(net, batch))
    assert torch.allclose(
        per_sample, torch.nn.functional.cross_entropy(net(batch["x"]), batch["y"], reduction="none")
    )

    y = np.arange(12, dtype=np.float32).reshape(6, 2) * 10  # two targets in tens
    regression = Regression("mse", "32", y)
    batch = {"x": torch.randn(6, 4), "y": torch.as_tensor(y)}
    net = torch.nn.Linear(4, 2)
    per_sample = regression.loss(net, batch)
    assert per_sample.shape == (6,)
    assert torch.allclose(per_sample.mean(), regression.mean_loss(net, batch))
    assert regression.grad_scale == pytest.approx(
        float(torch.as_tensor(y).std(dim=0).pow(2).mean())
    )


def test_reconstruction_loss_corruption_and_reported_scale():
    from dlrun.objectives.reconstruction import Reconstruction

    x = torch.randn(5, 1, 4, 4)
    plain = Reconstruction("mse", "none", 0.5, scale((1, 4, 4)))
    assert plain.loss(Identity(), {"x": x}).abs().max() == 0  # the identity reconstructs exactly
    assert plain.metrics == ("loss", "recon_mse")
    masked = Reconstruction("mse", "mask", 0.5, scale((1, 4, 4)))
    torch.manual_seed(0)
    given = masked.corrupt(torch.ones(2000))
    assert set(given.unique().tolist()) == {0.0, 1.0} and 0.45 < (given == 0).float().mean() < 0.55
    scores = masked.evaluate(Identity(), x, None)  # the identity returns the masked input
    assert scores["recon_mse"] == pytest.approx(scores["noisy_mse"])
    # in the input's own scale: std 0.25 -> squared errors 1/16 of the normalized ones
    assert scores["recon_mse"] == pytest.approx(scores["loss"] / 16, rel=1e-5)


def test_vae_terms_match_their_definitions():
    from torch.distributions import Normal, kl_divergence

    from dlrun.objectives.reconstruction import EvidenceBound

    mean, logvar = torch.randn(7, 3), torch.randn(7, 3)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(EvidenceBound.kl(mean, logvar), expected, atol=1e-5)
    bound = EvidenceBound(1.0, scale((4,)), image=False)
    x = torch.randn(7, 4)
    nll = bound.nll(x, x)  # a perfect mean: only the Gaussian's normalising constant is left
    assert torch.allclose(nll, torch.full((7,), 0.5 * 4 * math.log(2 * math.pi)))


def test_autoencoder_on_digits_reconstructs_better_than_pca(tmp_path):
    """No labels in training; test reconstruction error per pixel (in [0, 1]) below that of PCA
    with as many components as the latent has, fitted on the same training rows."""
    from sklearn.decomposition import PCA

    from conftest import make_cfg
    from dlrun.data import build_data, pixels_to_float
    from dlrun.validate import validate

    summary, run_dir = train(tmp_path, "model=autoencoder", "model.latent_size=16")
    assert summary["objective"] == "autoencoder" and summary["monitor"]["metric"] == "val_loss"
    data = build_data(validate(make_cfg()).data)
    raw = {
        s: pixels_to_float(data.stored[s], data.pixel_max).reshape(len(data.stored[s]), -1)
        for s in ("train", "test")
    }
    pca = PCA(16).fit(raw["train"])
    pca_mse = float(((pca.inverse_transform(pca.transform(raw["test"])) - raw["test"]) ** 2).mean())
    assert summary["test"]["recon_mse"] < pca_mse, (summary["test"]["recon_mse"], pca_mse)
    for name, size in (("reconstructions.png", (1000, 200)), ("latent.png", (500, 400))):
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.size[0] >= size[0] and image.size[1] >= size[1]
            assert len(np.unique(np.asarray(image.convert("L")))) > 20  # something was drawn
    assert not (run_dir / "confusion_matrix.png").exists()
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert any(k.startswith("encoder.") for k in state) and any(
        k.startswith("decoder.") for k in state
    )


def test_denoising_autoencoder_beats_its_noisy_input(tmp_path):
    summary, _ = train(
        tmp_path,
        "model=autoencoder",
        "model.denoise=gaussian",
        "model.noise=0.5",
        "trainer.max_epochs=10",
    )
    test = summary["test"]
    assert set(test) == {"loss", "recon_mse", "noisy_mse"}
    assert test["recon_mse"] < test["noisy_mse"] / 1.5, test


def test_vae_reports_its_bound_draws_samples_and_resumes_exactly(tmp_path, monkeypatch):
    args = ("model=vae", "trainer.max_epochs=4", "model.latent_size=4")
    full, full_dir = train(tmp_path, *args, name="full")
    test = full["test"]
    assert set(test) == {"loss", "elbo", "recon_mse", "kl"}
    assert test["elbo"] == pytest.approx(-test["loss"]) and test["kl"] > 0
    assert -45 < test["elbo"] < -15  # nats per digit (64 pixels); an untrained one is about -44
    assert full["monitor"]["mode"] == "min"
    with Image.open(full_dir / "samples.png") as image:
        assert image.size[0] >= 500 and len(np.unique(np.asarray(image.convert("L")))) > 20
    with sigint_after_epoch(monkeypatch, 2), pytest.raises(Interrupted):
        train(tmp_path, *args, name="cut")
    resumed, cut = train(tmp_path, *args, f"trainer.resume={tmp_path / 'cut'}", name="again")
    times = ("train_time_s", "epoch_time_s", "health/probe_time_s")
    strip = [{k: v for k, v in r.items() if k not in times} for r in read_metrics(tmp_path / "cut")]
    assert strip == [{k: v for k, v in r.items() if k not in times} for r in read_metrics(full_dir)]
    assert resumed["test"] == full["test"]


def test_eval_and_predict_of_an_autoencoder(tmp_path):
    from dlrun import use

    summary, run_dir = train(
        tmp_path, "model=autoencoder", "trainer.max_epochs=3", "model.latent_size=4"
    )
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    from sklearn.datasets import load_digits

    images = load_digits().images[:5, None].astype(np.float32) / 16  # pixels in [0, 1]
    np.save(tmp_path / "x.npy", images)
    frame = pd.read_csv(use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "codes.csv"))
    assert list(frame.columns) == ["z_0", "z_1", "z_2", "z_3", "recon_mse"]
    assert len(frame) == 5 and (frame["recon_mse"] > 0).all() and (frame["recon_mse"] < 0.2).all()


def test_an_objective_names_its_own_metrics_and_losses(tmp_path):
    with pytest.raises(ConfigError) as refused:
        train(tmp_path, "model=autoencoder", "trainer.early_stopping.monitor=val_accuracy")
    assert str(refused.value) == (
        "trainer.early_stopping.monitor: 'val_accuracy' is not a metric of the autoencoder. "
        "Choose one of: val_loss, val_recon_mse."
    )
    with pytest.raises(
        ConfigError, match=r"trainer.loss: 'cross_entropy' is not a loss of the vae"
    ):
        train(tmp_path, "model=vae", "trainer.loss=cross_entropy")
    with pytest.raises(ConfigError, match=r"model.noise is the share of values masked"):
        train(tmp_path, "model=autoencoder", "model.denoise=mask", "model.noise=1.5")
    summary, _ = train(
        tmp_path, "model=vae", "trainer.max_epochs=2", "trainer.early_stopping.monitor=val_elbo"
    )
    assert summary["monitor"]["mode"] == "max"
    json.dumps(summary, allow_nan=False)
