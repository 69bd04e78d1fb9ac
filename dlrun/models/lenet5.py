"""LeNet-5 (LeCun et al. 1998): two convolution + subsampling stages, then three fully connected
layers (C1 -> S2 -> C3 -> S4 -> C5/F6 -> output).

The paper's network reads 32x32 images with unpadded 5x5 convolutions, so by default
(`input_size: 32`) images of any size are resized to 32x32 on their way in, as the paper padded
MNIST's 28x28 digits into a 32x32 field. With `input_size: null` the network takes the data's own
size: `padding: auto` keeps the paper's unpadded convolutions for inputs of 28 pixels or more and
pads them ('same') below that, where unpadded convolutions would shrink the maps to nothing.
Input channels come from the data. The paper's activation is a scaled tanh with average pooling
(`activation: tanh`, `pooling: avg`); relu with max pooling, the common modern variant, is the
default because it learns faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dlrun.config import ACTIVATIONS, ModelConfig, setting
from dlrun.errors import ConfigError
from dlrun.models.layers import activation
from dlrun.registry import register_model

KERNEL = 5


@dataclass
class LeNet5Config(ModelConfig):
    name: str = "lenet5"
    channels: list[int] = setting([6, 16], lo=1)  # feature maps of C1 and C3
    fc_sizes: list[int] = setting([120, 84], lo=1)  # C5 and F6
    activation: str = setting("relu", choices=ACTIVATIONS)
    pooling: str = setting("max", choices=("avg", "max"))
    input_size: Optional[int] = setting(32, lo=1)  # images are resized to this; null: as they are
    padding: str = setting("auto", choices=("auto", "same", "valid"))
    dropout: float = setting(0.0, lo=0, hi=1, hi_open=True)

    def problems(self) -> list[str]:
        """Checks beyond single fields (called by dlrun.validate)."""
        return [
            f"model.{key} must list 2 sizes (LeNet-5 has two of each). Got {list(value)}."
            for key, value in (("channels", self.channels), ("fc_sizes", self.fc_sizes))
            if len(value) != 2
        ]


def feature_size(size: int, padding: str, stages: int = 2) -> int:
    """Height (or width) after `stages` of 5x5 convolution and 2x2 pooling."""
    for _ in range(stages):
        size = size if padding == "same" else size - KERNEL + 1
        size //= 2
    return size


@register_model("lenet5", schema=LeNet5Config, takes="image")
def build_lenet5(cfg: LeNet5Config, spec):
    from torch import nn

    c, h, w = spec.shape  # (C, H, W)
    padding = cfg.padding
    if padding == "auto":
        padding = "valid" if min(h, w) >= 28 else "same"
    fh, fw = feature_size(h, padding), feature_size(w, padding)
    if fh < 1 or fw < 1:
        raise ConfigError(
            f"model.padding: lenet5 with '{padding}' convolutions needs images of at least 16x16; "
            f"the images are {h}x{w}. Use model.padding=same or model.input_size=32."
        )
    pool = nn.AvgPool2d if cfg.pooling == "avg" else nn.MaxPool2d
    pad = KERNEL // 2 if padding == "same" else 0
    c1, c3 = cfg.channels
    f5, f6 = cfg.fc_sizes
    layers: list[nn.Module] = [
        nn.Conv2d(c, c1, KERNEL, padding=pad),  # C1: (B, c1, H', W')
        activation(cfg.activation),
        pool(2),  # S2
        nn.Conv2d(c1, c3, KERNEL, padding=pad),  # C3
        activation(cfg.activation),
        pool(2),  # S4: (B, c3, fh, fw)
        nn.Flatten(),
        nn.Linear(c3 * fh * fw, f5),  # C5
        activation(cfg.activation),
    ]
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers += [nn.Linear(f5, f6), activation(cfg.activation)]  # F6
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(f6, spec.out_features))
    return nn.Sequential(*layers)
