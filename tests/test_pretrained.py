"""Pretrained torchvision models: weights read only from torchvision's local cache (written here
into a temporary TORCH_HOME; any network access fails the test), a new head for the data, and
inputs prepared as the weights expect, in training, prediction and export alike."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from omegaconf import OmegaConf

from conftest import cli, make_cfg, read_metrics, train
from dlrun.catalog import load_catalog
from dlrun.data import DataSpec
from dlrun.errors import ConfigError, UserError
from dlrun.models.pretrained import PretrainedConfig
from dlrun.registry import MODELS
from dlrun.transfer import head_names

load_catalog()
PRETRAINED = sorted(n for n, e in MODELS.items() if issubclass(e.schema, PretrainedConfig))


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty torchvision cache in tmp_path, and no network: torch.hub's downloads and
    urllib's requests fail the test (subprocesses get a proxy that refuses connections)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def weights_of(name: str, weights: str = "DEFAULT"):
    return torchvision.models.get_model_weights(name)[weights]


def cache_file(name: str, weights: str = "DEFAULT") -> Path:
    """Where torchvision keeps these weights: $TORCH_HOME/hub/checkpoints/<the URL's file>."""
    url = weights_of(name, weights).url
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / Path(urlparse(url).path).name


def save_weights(name: str, weights: str = "DEFAULT") -> dict:
    """A state dict of the architecture (1000 classes) with recognisable values, saved where
    torchvision keeps the weights; returns it."""
    torch.manual_seed(1234)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    for key, value in state.items():  # batch-norm statistics too: every tensor is loaded
        if key.endswith("running_mean"):
            value.uniform_(-0.1, 0.1)
    path = cache_file(name, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def build(name: str, spec: DataSpec, *overrides: str):
    """The network as a new run builds it (dlrun.runner.build_network): weights loaded."""
    conf = OmegaConf.to_object(make_cfg(f"model={name}", *overrides))
    net = MODELS[name].build(conf.model, spec)
    net.load_pretrained()
    return net


def digits_npz(path: Path, n: int = 120) -> Path:
    """The first n digits as 8-bit grayscale images (1x8x8): a tiny image dataset."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images[:n, None] * 15).astype(np.uint8)  # pixels 0..16 -> 0..240
    np.savez(path, x=x, y=bunch.target[:n])
    return path


@pytest.mark.parametrize("name", PRETRAINED)
def test_the_body_starts_from_the_cached_weights_and_the_head_is_new(name):
    saved = save_weights(name)
    spec = DataSpec("d", "classification", "image", (1, 32, 32), num_classes=7)
    net = build(name, spec)
    state = {k.removeprefix("net."): v for k, v in net.state_dict().items()}
    # the head: exactly the layer whose shape changed from ImageNet's 1000 classes to 7
    changed = sorted(k for k in saved if saved[k].shape != state[k].shape)
    assert sorted(head_names(net)) == [f"net.{k}" for k in changed] and len(changed) == 2
    assert [state[k].shape[0] for k in changed] == [7, 7]  # weight (7, F), bias (7,)
    for key in saved.keys() - set(changed):
        assert torch.equal(state[key], saved[key]), key
    transforms = weights_of(name).transforms()
    assert net.mean.flatten().tolist() == pytest.approx(transforms.mean)
    assert net.std.flatten().tolist() == pytest.approx(transforms.std)

    # grayscale images read as RGB, normalized with the weights' mean and std
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 6])
    rgb = x.expand(-1, 3, -1, -1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (transforms.mean, transforms.std))
    with torch.no_grad():
        out = net.eval()(x)
        assert out.shape == (4, 7) and torch.equal(out, net(rgb))
        assert torch.allclose(out, net.net((rgb - mean) / std), atol=1e-6)
    # a training step: gradients reach every layer
    torch.nn.functional.cross_entropy(net.train()(x), y).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())

    # regression: one output per target
    regression = DataSpec("d", "regression", "image", (3, 32, 32), num_targets=2)
    net = build(name, regression)
    assert [tuple(net.state_dict()[k].shape)[0] for k in head_names(net)] == [2, 2]


def test_settings_follow_the_weights():
    """DEFAULT is recorded by the name it stands for; the input size is the weights' crop size
    unless set; dlrun's own normalization is off with weights and stays without."""
    conf = OmegaConf.to_object(make_cfg("model=resnet50"))
    conf.model.settle(conf)
    assert conf.model.weights == "IMAGENET1K_V2" and conf.model.input_size == 224
    assert conf.data.normalize is False
    conf = OmegaConf.to_object(make_cfg("model=resnet50", "model.weights=null"))
    conf.model.settle(conf)
    assert conf.model.input_size == 224 and conf.data.normalize is True
    conf = OmegaConf.to_object(make_cfg("model=resnet18", "model.input_size=32"))
    conf.model.settle(conf)
    assert conf.model.input_size == 32


@pytest.mark.slow  # (~35 s) the resnet18_finetune recipe runs the same path in the fast suite
def test_cli_fine_tunes_resnet18_on_digits(tmp_path):
    save_weights("resnet18")
    run_dir = tmp_path / "run"
    result = cli(
        "model=resnet18",
        "model.input_size=32",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = read_metrics(run_dir)
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test"]["accuracy"] > 0.3
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["weights"] == "IMAGENET1K_V1" and config["model"]["input_size"] == 32
    assert config["data"]["normalize"] is False  # the network normalizes as its weights expect
    prep = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    assert prep["normalize"] is False and prep["resize_to"] == 32
    assert prep["spec"]["shape"] == [1, 32, 32] and prep["native_shape"] == [1, 8, 8]


def test_missing_weights_file_says_where_and_how_to_get_it(tmp_path):
    result = cli("model=resnet18", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    path, url = cache_file("resnet18"), weights_of("resnet18").url
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        f"dlrun: model.weights: resnet18's IMAGENET1K_V1 weights are not in torchvision's cache: "
        f"{path} does not exist. Download {url} to that path, or add model.download=true to "
        "fetch it (TORCH_HOME moves the cache: $TORCH_HOME/hub/checkpoints).\n"
    )
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_unknown_weights_name_lists_the_allowed_ones(tmp_path):
    result = cli("model=resnet50", "model.weights=IMAGENET1K_V3", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        "dlrun: model.weights: 'IMAGENET1K_V3' is not a name of resnet50's weights. Choose one "
        "of: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2, null. Did you mean 'IMAGENET1K_V2'?\n"
    )


def test_download_only_when_asked_through_torch_hub(monkeypatch):
    conf = OmegaConf.to_object(make_cfg("model=mobilenet_v3_small", "model.download=true"))
    weights, path = weights_of("mobilenet_v3_small"), cache_file("mobilenet_v3_small")
    calls = []

    def fetch(url, **kwargs):  # what torch.hub does: the file lands in the cache
        calls.append((url, kwargs))
        state = torchvision.models.mobilenet_v3_small().state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    conf.model.check_weights()
    assert [url for url, _ in calls] == [weights.url] and path.is_file()
    assert calls[0][1]["check_hash"] and calls[0][1]["weights_only"]
    conf.model.check_weights()  # in the cache now: read from there
    assert len(calls) == 1

    def offline_fetch(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    path.unlink()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline_fetch)
    with pytest.raises(UserError) as failed:
        conf.model.check_weights()
    assert str(failed.value) == (
        f"model.download: could not fetch mobilenet_v3_small's IMAGENET1K_V1 weights from "
        f"{weights.url}: <urlopen error [Errno -3] Temporary failure in name resolution>. "
        f"Download it to {path} by other means."
    )


def test_damaged_or_wrong_weights_files_get_clear_messages():
    path, url = cache_file("resnet18"), weights_of("resnet18").url
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not a whole file")
    conf = OmegaConf.to_object(make_cfg("model=resnet18"))
    with pytest.raises(UserError) as damaged:
        conf.model.check_weights()
    message = str(damaged.value)
    assert message.startswith(
        f"model.weights: {path} cannot be read as resnet18's IMAGENET1K_V1 weights (truncated "
        "or corrupted?): "
    )
    assert message.endswith(
        f". Delete it and download {url} again (model.download=true fetches it)."
    )

    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match=r"holds a Tensor, not resnet18's IMAGENET1K_V1 weights"):
        conf.model.check_weights()

    other = torchvision.models.resnet34().state_dict()  # another architecture's weights
    torch.save(other, path)
    spec = DataSpec("d", "classification", "image", (3, 32, 32), num_classes=3)
    with pytest.raises(UserError) as wrong:
        build("resnet18", spec)
    assert str(wrong.value) == (
        f"model.weights: {path} does not hold resnet18's IMAGENET1K_V1 weights (unexpected: "
        "layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias, ...). Delete it and "
        f"download {url} again."
    )


@pytest.mark.parametrize(
    "data, kind",
    [("iris", "tabular data, shape 4"), ("sines", "sequence data, shape 100x1")],
    ids=["iris", "sines"],
)
def test_tables_and_sequences_are_refused(tmp_path, data, kind):
    with pytest.raises(
        ConfigError,
        match=rf"^model=resnet18 takes image input and cannot read data={data} \({kind}",
    ):
        train(tmp_path, "model=resnet18", "model.weights=null", f"data={data}")


def test_a_trained_run_needs_no_cache_and_its_export_matches_predict(tmp_path):
    """Only a new run reads the weights: evaluation, prediction, export and resuming take them
    from the run's checkpoint. The exported network holds the resize, the grayscale repeat and
    the weights' normalization: fed pixels in [0, 1] as loaded, it gives dlrun-predict's
    probabilities."""
    from dlrun import use

    save_weights("resnet18")
    path = digits_npz(tmp_path / "digits.npz")
    overrides = ("model=resnet18", "model.input_size=32", "data=npz", f"data.path={path}")
    summary, run_dir = train(tmp_path, *overrides, "trainer.max_epochs=1")
    assert summary["status"] == "completed"
    cache_file("resnet18").unlink()

    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    exported = use.export(run_dir, "onnx", None)  # checks itself against dlrun's outputs too
    x = np.load(path)["x"][:16]  # uint8, (16, 1, 8, 8)
    np.save(tmp_path / "x.npy", x)
    predicted = pd.read_csv(use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "p.csv"))
    expected = predicted.filter(like="proba_").to_numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": (x / np.float32(255)).astype(np.float32)})[0]
    assert got.shape == (16, 10) and np.allclose(got, expected, rtol=1e-4, atol=1e-5)

    resumed, _ = train(tmp_path, *overrides, "trainer.max_epochs=2", f"trainer.resume={run_dir}")
    assert resumed["epochs_run"] == 2


def test_images_of_other_channel_counts_are_refused():
    spec = DataSpec("d", "classification", "image", (4, 32, 32), num_classes=3)
    conf = OmegaConf.to_object(make_cfg("model=efficientnet_b0", "model.weights=null"))
    with pytest.raises(ConfigError) as refused:
        MODELS["efficientnet_b0"].build(conf.model, spec)
    assert str(refused.value) == (
        "model: efficientnet_b0 reads RGB images (or grayscale ones, repeated to 3 channels); "
        "the data's images have 4 channels."
    )
