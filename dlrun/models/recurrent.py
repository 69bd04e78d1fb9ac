"""Shared schema and builder of the recurrent models (`rnn`, `gru`, `lstm`, one file each)."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.config import ModelConfig, setting
from dlrun.models.layers import step_features, token_embedding


@dataclass
class RecurrentConfig(ModelConfig):
    hidden_size: int = setting(128, lo=1)
    num_layers: int = setting(1, lo=1)
    bidirectional: bool = False
    dropout: float = setting(0.0, lo=0, hi=1, hi_open=True)  # between stacked layers
    pooling: str = setting("last", choices=("last", "mean", "max"))  # what the head reads
    embed_size: int = setting(64, lo=1)  # text: the learned vector of each token id


def build_recurrent(kind: str, cfg: RecurrentConfig, spec, **extra):
    """One whole-sequence nn.RNN / nn.GRU / nn.LSTM call per batch; never a loop over steps.
    Variable lengths are masked, not packed: see dlrun.nn.RecurrentNet."""
    from torch import nn

    from dlrun.nn import RecurrentNet

    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
    rnn = cls(
        input_size=step_features(spec, cfg.embed_size),  # (T, D): D per step, or the embedding
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        batch_first=True,
        **extra,
    )
    return RecurrentNet(rnn, cfg.pooling, spec.out_features, token_embedding(spec, cfg.embed_size))
