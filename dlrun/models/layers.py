"""Small building blocks shared by the model files (torch is imported on first use)."""

from __future__ import annotations


def activation(name: str):
    """A fresh activation module by its config name (see `dlrun.config.ACTIVATIONS`)."""
    from torch import nn

    return {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
    }[name]()
