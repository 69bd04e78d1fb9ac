"""torchvision's ImageNet classifiers as dlrun models, starting from their pretrained weights:
`resnet18`, `resnet50` (He et al. 2016), `mobilenet_v3_small`, `mobilenet_v3_large` (Howard et
al. 2019) and `efficientnet_b0` (Tan & Le 2019).

`model.weights` names one of torchvision's weights for the architecture (`DEFAULT`,
`IMAGENET1K_V1`, ...; null: random initial weights). They are read only from torchvision's own
cache, `torch.hub.get_dir()/checkpoints` ($TORCH_HOME/hub/checkpoints), under the file name of
their URL, as torchvision itself would store them; `model.download=true` fetches a missing file
there. Nothing is ever downloaded unasked.

The network's last layer (the 1000 ImageNet classes) is replaced by a new one for the data's
classes or targets: it is what `dlrun.transfer.head_names` calls the head. Inputs are prepared
as the weights expect, from the weights' own transforms: images are resized to their crop size
(224; `model.input_size` changes it) by the data, as for LeNet-5, and the network itself
(`Pretrained`) repeats a grayscale image's channel three times and normalizes pixels in [0, 1]
with the weights' per-channel mean and std; dlrun's normalization from the training split
(`data.normalize`) is then switched off, so exports and predictions carry the same steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dlrun.config import ModelConfig, setting
from dlrun.errors import ConfigError, UserError, first_line, not_one_of, regular_file
from dlrun.registry import register_model

log = logging.getLogger("dlrun")


@dataclass
class PretrainedConfig(ModelConfig):
    # torchvision's name of the weights (DEFAULT, IMAGENET1K_V1, ...); null: random initial weights
    weights: Optional[str] = "DEFAULT"
    download: bool = False  # fetch the weights into torchvision's cache when they are not there
    input_size: Optional[int] = setting(None, lo=1)  # images resized to N x N; null: crop size

    def problems(self) -> list[str]:
        """Checks beyond single fields (called by dlrun.validate)."""
        if self.weights is None or self.weights in weight_names(self.name):
            return []
        return [
            not_one_of(
                "model.weights",
                f"a name of {self.name}'s weights",
                self.weights,
                [*weight_names(self.name), "null"],
            )
        ]

    def settle(self, conf) -> None:
        """The settings that follow the weights, resolved before the data is prepared (the run's
        config.yaml records them): DEFAULT becomes the name it stands for, the input size the
        weights' crop size, and the data is left unnormalized for the network's own
        normalization."""
        weights = find_weights(self.name, self.weights)
        if weights is not None:
            self.weights = weights.name
            if conf.data.normalize:
                log.info("data.normalize: off; %s normalizes as its weights expect", self.name)
                conf.data.normalize = False
        if self.input_size is None:
            self.input_size = crop_size(self.name, weights)

    def check_weights(self) -> None:
        """Before a new run does any work: its weights are in the cache, or fetched there with
        model.download=true."""
        weights = find_weights(self.name, self.weights)
        if weights is not None:
            cached_weights(self.name, weights, self.download)  # read through: not damaged


@dataclass
class ResNet18Config(PretrainedConfig):
    name: str = "resnet18"


@dataclass
class ResNet50Config(PretrainedConfig):
    name: str = "resnet50"


@dataclass
class MobileNetV3SmallConfig(PretrainedConfig):
    name: str = "mobilenet_v3_small"


@dataclass
class MobileNetV3LargeConfig(PretrainedConfig):
    name: str = "mobilenet_v3_large"


@dataclass
class EfficientNetB0Config(PretrainedConfig):
    name: str = "efficientnet_b0"


def weight_names(name: str) -> list[str]:
    """The names torchvision gives the architecture's weights, DEFAULT among them."""
    from torchvision.models import get_model_weights

    return list(get_model_weights(name).__members__)


def find_weights(name: str, weights: str | None):
    """torchvision's weights enum member for `weights` (DEFAULT resolved), or None."""
    from torchvision.models import get_model_weights

    return None if weights is None else get_model_weights(name)[weights]


def crop_size(name: str, weights) -> int:
    """The input size the weights were trained at (without weights: the default weights')."""
    from torchvision.models import get_model_weights

    weights = weights or get_model_weights(name).DEFAULT
    return int(weights.transforms().crop_size[0])


def cache_path(weights) -> Path:
    """Where torchvision keeps the weights: torch.hub's checkpoints folder, the URL's file name."""
    import os
    from urllib.parse import urlparse

    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def cached_weights(name: str, weights, download: bool) -> dict:
    """The weights' state dict from torchvision's cache (read with weights_only=True); with
    `download`, a missing file is fetched there first. Every failure is one clear UserError."""
    import torch

    path = cache_path(weights)
    what = f"{name}'s {weights.name} weights"
    again = f"Delete it and download {weights.url} again (model.download=true fetches it)."
    if not path.exists() and not download:
        raise UserError(
            f"model.weights: {what} are not in torchvision's cache: {path} does not exist. "
            f"Download {weights.url} to that path, or add model.download=true to fetch it "
            "(TORCH_HOME moves the cache: $TORCH_HOME/hub/checkpoints)."
        )
    if not path.exists():
        log.info("downloading %s to %s", weights.url, path)
        try:
            return torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", check_hash=True, weights_only=True
            )
        except Exception as ex:  # no network, a refused connection, a hash that differs
            raise UserError(
                f"model.download: could not fetch {what} from {weights.url}: {first_line(ex)}. "
                f"Download it to {path} by other means."
            ) from None
    regular_file(path, "model.weights", what)  # a FIFO would block torch.load
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:  # truncated, not a torch file, or holding code (weights_only)
        raise UserError(
            f"model.weights: {path} cannot be read as {what} (truncated or corrupted?): "
            f"{first_line(ex)}. {again}"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"model.weights: {path} holds a {type(state).__name__}, not {what}. {again}"
        )
    return state


def load_body(name: str, weights, download: bool, net) -> None:
    """The weights from torchvision's cache into every layer of `net` but its head (new)."""
    from dlrun.transfer import head_names

    state = cached_weights(name, weights, download)
    head = set(head_names(net))
    body = {k: v for k, v in state.items() if k not in head}
    try:
        missing, unexpected = net.load_state_dict(body, strict=False)
        found = [
            f"{what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", [k for k in missing if k not in head]),
                ("unexpected", unexpected),
            )
            if keys
        ]
    except RuntimeError as ex:  # "size mismatch for conv1.weight: copying a param with ..."
        found = [next((s.strip() for s in str(ex).splitlines() if "mismatch" in s), first_line(ex))]
    if found:
        raise UserError(
            f"model.weights: {cache_path(weights)} does not hold {name}'s {weights.name} weights "
            f"({'; '.join(found)}). Delete it and download {weights.url} again."
        )


def build_pretrained(cfg: PretrainedConfig, spec):
    import functools

    import torchvision
    from torch import nn

    from dlrun.nn import Pretrained
    from dlrun.transfer import head_names

    channels = spec.shape[0]  # (C, H, W)
    if channels not in (1, 3):
        raise ConfigError(
            f"model: {cfg.name} reads RGB images (or grayscale ones, repeated to 3 channels); "
            f"the data's images have {channels} channels."
        )
    net = torchvision.models.get_model(cfg.name, weights=None)  # (B, 3, H, W) -> (B, 1000)
    head = head_names(net)[0].rsplit(".", 1)[0]  # fc, or the classifier's last Linear
    net.set_submodule(head, nn.Linear(net.get_submodule(head).in_features, spec.out_features))
    weights = find_weights(cfg.name, cfg.weights)
    if weights is None:  # random initial weights: the data's own normalization stays
        return Pretrained(net, [0.0] * 3, [1.0] * 3)
    t = weights.transforms()
    start = functools.partial(load_body, cfg.name, weights, cfg.download)
    return Pretrained(net, t.mean, t.std, start)


for _name, _schema in (
    ("resnet18", ResNet18Config),
    ("resnet50", ResNet50Config),
    ("mobilenet_v3_small", MobileNetV3SmallConfig),
    ("mobilenet_v3_large", MobileNetV3LargeConfig),
    ("efficientnet_b0", EfficientNetB0Config),
):
    register_model(_name, schema=_schema, takes="image")(build_pretrained)
