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


def token_embedding(spec, size: int):
    """For text (`spec.vocab_size` set: samples are token ids, 0 pads), an nn.Embedding of
    `size` per token whose padding id stays the zero vector; None for feature sequences."""
    if spec.vocab_size is None:
        return None
    from torch import nn

    return nn.Embedding(spec.vocab_size, size, padding_idx=0)


def step_features(spec, embed_size: int) -> int:
    """What a sequence model reads per step: D of the spec's (T, D), or the embedding's size."""
    return spec.shape[1] if spec.vocab_size is None else embed_size
