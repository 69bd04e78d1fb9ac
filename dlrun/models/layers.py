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


def init_linear(net, how: str, activation_name: str) -> None:
    """Initialize every Linear layer's weights for the activation that follows it, biases to 0.

    Without it, PyTorch's default (uniform, gain 1/sqrt(3)) shrinks the signal layer after layer
    in a deep relu network, which then cannot start learning.
    """
    from torch import nn

    if how == "torch":
        return
    if how == "auto":
        how = "xavier" if activation_name in ("tanh", "sigmoid") else "kaiming"
    for layer in net.modules():
        if isinstance(layer, nn.Linear):
            if how == "kaiming":
                nonlinearity = "leaky_relu" if activation_name == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
            else:
                gain = nn.init.calculate_gain(
                    activation_name if activation_name in ("tanh", "sigmoid") else "linear"
                )
                nn.init.xavier_uniform_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
