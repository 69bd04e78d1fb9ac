"""Multilayer perceptron: Linear -> (BatchNorm) -> activation -> (Dropout), per hidden layer."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.config import ACTIVATIONS, ModelConfig, setting
from dlrun.models.layers import activation, init_linear
from dlrun.registry import register_model


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = setting([128, 64], lo=1)
    activation: str = setting("relu", choices=ACTIVATIONS)
    dropout: float = setting(0.0, lo=0, hi=1, hi_open=True)
    batch_norm: bool = False
    # Weight init: auto is He/Kaiming (He et al. 2015) for the relu family and gelu, Glorot/Xavier
    # (Glorot & Bengio 2010) for tanh and sigmoid; torch keeps PyTorch's own default.
    init: str = setting("auto", choices=("auto", "kaiming", "xavier", "torch"))


@register_model("mlp", schema=MLPConfig, takes="flat")
def build_mlp(cfg: MLPConfig, spec):
    from torch import nn

    layers: list[nn.Module] = []
    width = spec.shape[0]  # (F,) after flattening
    for hidden in cfg.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(cfg.activation))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, spec.out_features))
    net = nn.Sequential(*layers)
    init_linear(net, cfg.init, cfg.activation)
    return net
