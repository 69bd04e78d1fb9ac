"""Objectives: each one's step on tiny data, and autoencoders / VAEs through the whole runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import read_metrics, resumes_exactly, train
from dlrun.errors import ConfigError


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
    resumes_exactly(tmp_path, monkeypatch, args, full, full_dir)


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


def test_gan_losses_follow_their_definitions():
    from types import SimpleNamespace

    from dlrun.objectives.adversarial import Adversarial, Features

    class Perfect(torch.nn.Module):
        """A discriminator that is sure: +20 on real samples (positive), -20 on generated ones."""

        latent_size, image = 2, False

        def generate(self, z):
            return -torch.ones(len(z), 3)

        def forward(self, x):
            return 20 * x.mean(1)

    cfg = SimpleNamespace(
        loss="non_saturating", latent_size=2, d_lr=1e-3, g_lr=2e-3, betas=[0.5, 0.9], d_steps=2
    )
    gan = Adversarial(cfg, Features(None, 0), torch.device("cpu"))
    assert [p.name for p in gan.phases] == ["disc", "disc", "gen"]
    batch = {"x": torch.ones(4, 3)}
    assert gan.loss(Perfect(), batch, "disc").max() < 1e-8  # -log D(x) - log(1 - D(G(z))) ~ 0
    assert torch.allclose(gan.loss(Perfect(), batch, "gen"), torch.full((4,), 20.0), atol=1e-6)
    hinge = Adversarial(
        SimpleNamespace(**{**vars(cfg), "loss": "hinge"}), Features(None, 0), torch.device("cpu")
    )
    assert hinge.loss(Perfect(), batch, "disc").max() == 0  # both margins met
    assert torch.allclose(hinge.loss(Perfect(), batch, "gen"), torch.full((4,), 20.0))
    from dlrun.optim import AdamConfig, SGDConfig

    adam = gan.optim_config("gen", AdamConfig())
    assert adam.lr == 2e-3 and adam.betas == [0.5, 0.9]
    assert gan.optim_config("disc", SGDConfig()).lr == 1e-3


def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy import linalg

    from dlrun.objectives.adversarial import frechet

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 12)), rng.normal(size=(300, 12)) * 1.3 + 0.2
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet(a, a) == pytest.approx(0, abs=1e-9)


def test_dcgan_learns_from_its_untrained_start_and_draws_each_epoch(tmp_path):
    summary, run_dir = train(tmp_path, "model=dcgan", "trainer.max_epochs=3")
    assert summary["objective"] == "gan" and summary["monitor"]["metric"] == "val_fid"
    assert set(summary["test"]) == {"fid", "coverage", "diversity"}
    assert summary["test"]["fid"] < 0.5 * summary["untrained"]["val"]["fid"]
    records = read_metrics(run_dir)
    assert {"train_loss/disc", "train_loss/gen", "grad_norm/disc", "grad_norm/gen"} <= set(
        records[0]
    )
    for k in (1, 2, 3):
        with Image.open(run_dir / "samples" / f"epoch_{k}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 500
    with Image.open(run_dir / "samples.png") as image:
        assert len(np.unique(np.asarray(image.convert("L")))) > 20
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert set(last["optimizers"]) == {"disc", "gen"}
    assert last["optimizers"]["gen"]["param_groups"][0]["lr"] == 2e-4
    assert last["optimizers"]["gen"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert (run_dir / "checkpoints" / "features.pt").is_file()

    from dlrun import use

    before = (run_dir / "checkpoints" / "features.pt").read_bytes()
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    assert (run_dir / "checkpoints" / "features.pt").read_bytes() == before


def test_gan_resumes_exactly_with_both_optimizers(tmp_path, monkeypatch):
    args = ("model=gan", "trainer.max_epochs=4", "model.d_steps=2", "model.hidden_sizes=[64,64]")
    full, full_dir = train(tmp_path, *args, name="full")
    resumes_exactly(tmp_path, monkeypatch, args, full, full_dir)


def test_a_gan_on_a_regression_table_is_judged_in_its_own_space(tmp_path):
    summary, run_dir = train(tmp_path, "model=gan", "data=diabetes", "trainer.max_epochs=2")
    assert set(summary["test"]) == {"fid", "diversity"} and summary["test"]["fid"] > 0
    with Image.open(run_dir / "samples.png") as image:  # real and generated rows, 2-D PCA
        assert image.size[0] >= 500 and len(np.unique(np.asarray(image.convert("L")))) > 20
    assert not (run_dir / "samples").exists()  # no per-epoch image grids for a table


def test_gan_health_findings():
    from types import SimpleNamespace

    from dlrun.health import findings

    conf = SimpleNamespace(
        optim=SimpleNamespace(lr=2e-4),
        model=SimpleNamespace(name="dcgan", g_lr=2e-4, d_lr=2e-4, d_steps=1),
        trainer=SimpleNamespace(
            clip=SimpleNamespace(max_norm=None), early_stopping=SimpleNamespace(monitor="val_fid")
        ),
    )
    history = [
        {"epoch": e, "train_loss/disc": d, "val_fid": 10.0, "val_coverage": c, "val_diversity": v}
        for e, d, c, v in (
            (1, 0.5, 1.0, 0.9),
            (2, 0.02, 0.9, 0.5),
            (3, 0.01, 0.6, 0.2),
            (4, 0.01, 0.5, 0.05),
        )
    ]
    kinds = {f.kind: f for f in findings(history, conf)}
    assert set(kinds) == {"mode_collapse", "discriminator_wins"}
    assert kinds["mode_collapse"].message.startswith(
        "the generated samples vary 0.05 times as much"
    )
    assert kinds["discriminator_wins"].advice == "try model.d_lr=5e-05 or model.loss=hinge"
    assert kinds["discriminator_wins"].since_epoch == 2


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_generated_samples_and_the_exported_generator(tmp_path, model):
    """dlrun-predict samples=N draws from the prior; dlrun-export writes the decoder or the
    generator (latent in, pixels in [0, 1] out) and its contract; both agree with dlrun."""
    import onnxruntime

    from conftest import cli
    from dlrun import use

    _, run_dir = train(tmp_path, f"model={model}", "trainer.max_epochs=2")
    result = cli(f"run_dir={run_dir}", "samples=12", "seed=3", cwd=tmp_path, tool="dlrun-predict")
    assert result.returncode == 0, result.stderr
    samples = np.load(run_dir / "predictions" / "samples.npy")
    assert samples.shape == (12, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert samples.std() > 0.05  # not one blank image

    path = use.export(run_dir, "onnx", None)
    contract = json.loads(path.with_name("model.onnx.json").read_text())
    latent = contract["input"]["shape"][1]
    assert contract["output"]["shape"] == ["batch", 1, 8, 8]
    assert "N(0, I)" in contract["input"]["what"] and "[0, 1]" in contract["output"]["what"]
    z = np.random.default_rng(0).standard_normal((5, latent)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": z})[0]
    with torch.no_grad():
        expected = use.Trained(run_dir).generator().cpu()(torch.as_tensor(z)).numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # (~50 s) each objective has its own tests; this sweeps them all
def test_a_sweep_over_the_models_without_labels(tmp_path):
    """Through the command: one sweep, one leaderboard, each job with its own pictures."""
    import csv

    from conftest import cli

    result = cli(
        "-m",
        "model=autoencoder,vae,gan,dcgan",
        "trainer.max_epochs=1",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    with (tmp_path / "sweep" / "leaderboard.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"autoencoder", "vae", "gan", "dcgan"}
    assert all(r["status"] == "ok" for r in rows.values())
    pictures = {
        "autoencoder": {"reconstructions.png", "latent.png"},
        "vae": {"reconstructions.png", "latent.png", "samples.png"},
        "gan": {"samples.png"},
        "dcgan": {"samples.png"},
    }
    for model, row in rows.items():
        made = {p.name for p in (tmp_path / "sweep" / row["job"]).glob("*.png")}
        assert pictures[model] <= made, (model, made)
