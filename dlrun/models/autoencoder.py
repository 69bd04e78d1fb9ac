"""Autoencoders: compress the input into a small latent vector and reconstruct it.

`autoencoder` learns to reconstruct its input (from a noisy or masked copy with `denoise`);
`vae` is the variational autoencoder of Kingma & Welling (2014): the encoder gives a Gaussian
over the latent (mean and log-variance), a sample of it (the reparameterisation trick) is
decoded, and the loss is the negative evidence lower bound, reconstruction + `beta` x KL.

The architecture follows the data: images get a convolutional encoder (stride-2 3x3
convolutions, `channels` per stage) and a decoder that mirrors it (upsampling to the exact sizes
back, then 3x3 convolutions); anything else is flattened and gets an MLP (`hidden_sizes`, then
mirrored). Sizes come from the data. Both models have an `encoder` and a `decoder`, so a
later run can reuse the encoder (its weights are the `encoder.*` entries of the checkpoints).
Labels, when the data has them, are not used for training: only to colour the latent plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlrun.config import ACTIVATIONS, ModelConfig, setting
from dlrun.errors import ConfigError
from dlrun.models.layers import activation
from dlrun.registry import register_model

ARCHITECTURES = ("auto", "mlp", "conv")


@dataclass
class AutoencoderConfig(ModelConfig):
    name: str = "autoencoder"
    latent_size: int = setting(16, lo=1)
    hidden_sizes: list[int] = setting([256, 128], lo=1)  # MLP encoder (flat data); mirrored
    channels: list[int] = setting([32, 64], lo=1)  # conv encoder stages (images); mirrored
    activation: str = setting("relu", choices=ACTIVATIONS)
    # auto: convolutional for images, an MLP for anything else; mlp: images flattened too (an
    # encoder an `mlp` classifier with the same hidden_sizes can start from: model.init_from)
    architecture: str = setting("auto", choices=ARCHITECTURES)
    # denoising: the input is corrupted in training (gaussian: noise of std `noise` in normalized
    # units; mask: a share `noise` of the values set to zero), the clean input is the target
    denoise: str = setting("none", choices=("none", "gaussian", "mask"))
    noise: float = setting(0.5, lo=0, lo_open=True)

    def problems(self) -> list[str]:
        if self.denoise == "mask" and self.noise >= 1:
            return [
                f"model.noise is the share of values masked with model.denoise=mask: it must be "
                f"in (0, 1). Got {self.noise}."
            ]
        return []


@dataclass
class VAEConfig(ModelConfig):
    name: str = "vae"
    latent_size: int = setting(8, lo=1)
    hidden_sizes: list[int] = setting([256, 128], lo=1)
    channels: list[int] = setting([32, 64], lo=1)
    activation: str = setting("relu", choices=ACTIVATIONS)
    architecture: str = setting("auto", choices=ARCHITECTURES)  # as the autoencoder's
    beta: float = setting(1.0, lo=0)  # weight of the KL term (Higgins et al. 2017's beta-VAE)


@register_model("autoencoder", schema=AutoencoderConfig, takes="native", objective="autoencoder")
def build_autoencoder(cfg: AutoencoderConfig, spec):
    return AutoEncoder(cfg, spec, variational=False)


@register_model("vae", schema=VAEConfig, takes="native", objective="vae")
def build_vae(cfg: VAEConfig, spec):
    return AutoEncoder(cfg, spec, variational=True)


def AutoEncoder(cfg, spec, variational: bool):
    """The network (dlrun.nn.AutoEncoderNet), its encoder and decoder built for the data."""
    from dlrun.nn import AutoEncoderNet

    out = cfg.latent_size * (2 if variational else 1)
    if cfg.architecture == "conv" and spec.kind != "image":
        raise ConfigError(
            f"model.architecture: 'conv' needs images; this data is {spec.kind}. Use auto or mlp."
        )
    if spec.kind == "image" and cfg.architecture != "mlp":
        encoder, decoder = conv_pair(cfg, spec.shape, out)
    else:
        encoder, decoder = mlp_pair(cfg, math.prod(spec.shape), out)
    return AutoEncoderNet(encoder, decoder, spec.shape, cfg.latent_size, variational)


def mlp_pair(cfg, width: int, out: int):
    from torch import nn

    sizes = [width, *cfg.hidden_sizes]
    encoder: list = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:], strict=False):
        encoder += [nn.Linear(a, b), activation(cfg.activation)]
    encoder.append(nn.Linear(sizes[-1], out))
    back = [cfg.latent_size, *reversed(cfg.hidden_sizes)]
    decoder: list = []
    for a, b in zip(back, back[1:], strict=False):
        decoder += [nn.Linear(a, b), activation(cfg.activation)]
    decoder.append(nn.Linear(back[-1], width))
    return nn.Sequential(*encoder), nn.Sequential(*decoder)


def conv_pair(cfg, shape: tuple, out: int):
    """Stride-2 convolutions down to a small map, a linear layer to the latent; the decoder
    goes back up through the same sizes (upsampling to each exact size, then a convolution)."""
    from torch import nn

    c, h, w = shape
    sizes = [(h, w)]
    for _ in cfg.channels:
        h, w = (h + 1) // 2, (w + 1) // 2  # a 3x3 convolution, stride 2, padding 1
        sizes.append((h, w))
    chans = [c, *cfg.channels]
    flat = chans[-1] * h * w
    encoder: list = []
    for a, b in zip(chans, chans[1:], strict=False):
        encoder += [nn.Conv2d(a, b, 3, stride=2, padding=1), activation(cfg.activation)]
    encoder += [nn.Flatten(), nn.Linear(flat, out)]
    decoder: list = [
        nn.Linear(cfg.latent_size, flat),
        activation(cfg.activation),
        nn.Unflatten(1, (chans[-1], h, w)),
    ]
    back = list(reversed(chans))  # e.g. 64, 32, 1
    for i, (a, b) in enumerate(zip(back, back[1:], strict=False)):
        decoder += [nn.Upsample(size=sizes[-2 - i], mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
        if i < len(back) - 2:
            decoder.append(activation(cfg.activation))
    return nn.Sequential(*encoder), nn.Sequential(*decoder)
