"""Generative adversarial networks (Goodfellow et al. 2014): a generator turns noise into samples,
a discriminator tells them from the data, and the two are trained in turn.

`dcgan` follows Radford et al. (2016) for images of any size: the generator maps the latent
through a linear layer to a small map, then upsamples to each size back (nearest, then a 3x3
convolution with batch norm and ReLU) to the data's shape; the discriminator is stride-2 3x3
convolutions with leaky ReLU (batch norm after the first), then a linear layer to one logit.
`gan` is the MLP pair, for tables and small images. Image generators end in a sigmoid (pixels in
[0, 1]) and hand the discriminator their samples normalized like the data's; table generators
produce normalized values directly.

The objective's settings live here too: `loss` (non_saturating, the generator loss of Goodfellow
et al.; or hinge), `d_steps` (discriminator steps per generator step) and each network's
learning rate, with Adam's betas (0.5, 0.999) as in Radford et al. The optimizer is the `optim`
group's (adam by default); a learning-rate schedule applies to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlrun.config import ModelConfig, setting
from dlrun.registry import register_model

LOSSES = ("non_saturating", "hinge")


@dataclass
class GANSettings(ModelConfig):
    latent_size: int = setting(64, lo=1)
    loss: str = setting("non_saturating", choices=LOSSES)
    d_steps: int = setting(1, lo=1)  # discriminator steps per generator step
    g_lr: float = setting(2e-4, lo=0, lo_open=True)
    d_lr: float = setting(2e-4, lo=0, lo_open=True)
    betas: list[float] = setting([0.5, 0.999], lo=0, hi=1, hi_open=True)  # Adam's, for both


@dataclass
class GANConfig(GANSettings):
    name: str = "gan"
    hidden_sizes: list[int] = setting([256, 256], lo=1)  # generator; the discriminator mirrors it


@dataclass
class DCGANConfig(GANSettings):
    name: str = "dcgan"
    channels: list[int] = setting([64, 128], lo=1)  # discriminator stages; the generator mirrors


@register_model("gan", schema=GANConfig, takes="native", objective="gan")
def build_gan(cfg: GANConfig, spec):
    from torch import nn

    from dlrun.nn import GANNet

    width = math.prod(spec.shape)
    sizes = [cfg.latent_size, *cfg.hidden_sizes]
    layers: list = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    generator = nn.Sequential(*layers, nn.Linear(sizes[-1], width))
    back = [width, *reversed(cfg.hidden_sizes)]
    layers = [nn.Flatten()]
    for a, b in zip(back, back[1:], strict=False):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
    discriminator = nn.Sequential(*layers, nn.Linear(back[-1], 1))
    return GANNet(generator, discriminator, spec.shape, cfg.latent_size, spec.kind == "image")


@register_model("dcgan", schema=DCGANConfig, takes="image", objective="gan")
def build_dcgan(cfg: DCGANConfig, spec):
    from torch import nn

    from dlrun.nn import GANNet

    c, h, w = spec.shape
    sizes = [(h, w)]
    for _ in cfg.channels:
        h, w = (h + 1) // 2, (w + 1) // 2  # each discriminator stage halves the map
        sizes.append((h, w))
    chans = [c, *cfg.channels]
    layers: list = []
    for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
        layers.append(nn.Conv2d(a, b, 3, stride=2, padding=1))
        layers += ([nn.BatchNorm2d(b)] if i else []) + [nn.LeakyReLU(0.2)]
    discriminator = nn.Sequential(*layers, nn.Flatten(), nn.Linear(chans[-1] * h * w, 1))
    back = list(reversed(chans))  # e.g. 128, 64, 1
    layers = [
        nn.Linear(cfg.latent_size, back[0] * h * w),
        nn.Unflatten(1, (back[0], h, w)),
        nn.BatchNorm2d(back[0]),
        nn.ReLU(),
    ]
    for i, (a, b) in enumerate(zip(back, back[1:], strict=False)):
        layers += [nn.Upsample(size=sizes[-2 - i], mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
        if i < len(back) - 2:
            layers += [nn.BatchNorm2d(b), nn.ReLU()]
    generator = nn.Sequential(*layers)
    return GANNet(generator, discriminator, spec.shape, cfg.latent_size, image=True)
