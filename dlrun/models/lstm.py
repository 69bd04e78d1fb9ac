"""Long short-term memory network (Hochreiter & Schmidhuber 1997), nn.LSTM."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.models.recurrent import RecurrentConfig, build_recurrent
from dlrun.registry import register_model


@dataclass
class LSTMConfig(RecurrentConfig):
    name: str = "lstm"


@register_model("lstm", schema=LSTMConfig, takes="sequence")
def build_lstm(cfg: LSTMConfig, spec):
    return build_recurrent("lstm", cfg, spec)
