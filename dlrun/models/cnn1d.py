"""1-D convolutional network over sequences: blocks of Conv1d ('same' length) -> batch norm ->
activation -> dropout, with max or average pooling between blocks, then global mean or max
pooling over the steps and a linear head.

Sequences of different lengths are padded after their end; the network masks the padding at
every stage (each block zeroes it before convolving, batch-norm statistics and pooling windows
count valid steps only, lengths shrink exactly through each pooling), so a sequence's output
does not depend on the batch it is padded into (dlrun.nn.ConvBlock1d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlrun.config import ACTIVATIONS, ModelConfig, setting
from dlrun.models.layers import activation, step_features, token_embedding
from dlrun.registry import register_model


@dataclass
class CNN1dConfig(ModelConfig):
    name: str = "cnn1d"
    channels: list[int] = setting([64, 64, 128], lo=1)  # output channels of each block
    kernel_size: int = setting(5, lo=1)
    dilation: Any = 1  # one value for every block, or a list with one per block
    batch_norm: bool = True
    activation: str = setting("relu", choices=ACTIVATIONS)
    dropout: float = setting(0.0, lo=0, hi=1, hi_open=True)
    pooling: str = setting("max", choices=("max", "avg", "none"))  # between blocks
    pool_size: int = setting(2, lo=2)  # each pooling divides the steps by this (rounded up)
    global_pooling: str = setting("mean", choices=("mean", "max"))  # over the remaining steps
    embed_size: int = setting(64, lo=1)  # text: the learned vector of each token id

    def dilations(self) -> list[int]:
        """One dilation per block."""
        if isinstance(self.dilation, list):
            return list(self.dilation)
        return [self.dilation] * len(self.channels)

    def problems(self) -> list[str]:
        """Checks beyond single fields (called by dlrun.validate)."""
        if not self.channels:
            return [f"model.channels must list at least one block's channels. Got {self.channels}."]
        blocks = len(self.channels)
        d = self.dilation
        one = isinstance(d, int) and not isinstance(d, bool) and d >= 1
        per_block = isinstance(d, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in d
        )
        if not (one or per_block):
            return [
                f"model.dilation must be an int >= 1 or a list of them, one per block. Got {d!r}."
            ]
        if per_block and len(d) != blocks:
            return [
                f"model.dilation must list one value per block ({blocks}, as model.channels) "
                f"or be one int. Got {d} ({len(d)} values)."
            ]
        return []


@register_model("cnn1d", schema=CNN1dConfig, takes="sequence")
def build_cnn1d(cfg: CNN1dConfig, spec):
    from torch import nn

    from dlrun.nn import CNN1dNet, ConvBlock1d, MaskedBatchNorm1d

    width = step_features(spec, cfg.embed_size)  # (T, D): D per step, or the embedding
    blocks = []
    last = len(cfg.channels) - 1
    for i, (channels, dilation) in enumerate(zip(cfg.channels, cfg.dilations(), strict=True)):
        conv = nn.Conv1d(
            width,
            channels,
            cfg.kernel_size,
            dilation=dilation,
            padding="same",  # T steps in, T out
            bias=not cfg.batch_norm,  # batch norm's shift replaces the bias
        )
        norm = MaskedBatchNorm1d(channels) if cfg.batch_norm else None
        pool = "none" if i == last else cfg.pooling  # between blocks; global pooling ends
        blocks.append(
            ConvBlock1d(conv, norm, activation(cfg.activation), cfg.dropout, pool, cfg.pool_size)
        )
        width = channels
    head = nn.Linear(width, spec.out_features)
    return CNN1dNet(blocks, cfg.global_pooling, head, token_embedding(spec, cfg.embed_size))
