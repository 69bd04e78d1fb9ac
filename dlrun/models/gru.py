"""Gated recurrent unit network (Cho et al. 2014), nn.GRU."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.models.recurrent import RecurrentConfig, build_recurrent
from dlrun.registry import register_model


@dataclass
class GRUConfig(RecurrentConfig):
    name: str = "gru"


@register_model("gru", schema=GRUConfig, takes="sequence")
def build_gru(cfg: GRUConfig, spec):
    return build_recurrent("gru", cfg, spec)
