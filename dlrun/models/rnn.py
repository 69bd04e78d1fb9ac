"""Elman recurrent network (nn.RNN), tanh or relu."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.config import setting
from dlrun.models.recurrent import RecurrentConfig, build_recurrent
from dlrun.registry import register_model


@dataclass
class RNNConfig(RecurrentConfig):
    name: str = "rnn"
    nonlinearity: str = setting("tanh", choices=("tanh", "relu"))


@register_model("rnn", schema=RNNConfig, takes="sequence")
def build_rnn(cfg: RNNConfig, spec):
    return build_recurrent("rnn", cfg, spec, nonlinearity=cfg.nonlinearity)
