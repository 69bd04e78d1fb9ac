"""Transformer encoder (Vaswani et al. 2017) over sequences: input projection (token ids are
embedded first, `embed_size` per token), positions, pre-norm encoder layers, then a CLS token or mean
pooling and a linear head. Padded steps are masked (dlrun.nn.TransformerNet)."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.config import ModelConfig, setting
from dlrun.models.layers import step_features, token_embedding
from dlrun.registry import register_model


@dataclass
class AttentionConfig(ModelConfig):
    name: str = "attention"
    d_model: int = setting(64, lo=1)
    heads: int = setting(4, lo=1)
    layers: int = setting(2, lo=1)
    ff_size: int = setting(128, lo=1)  # hidden size of each layer's feed-forward block
    dropout: float = setting(0.1, lo=0, hi=1, hi_open=True)
    # sinusoidal: a learned table starts near zero, and on one-feature steps (a sensor's series)
    # attention then cannot tell steps apart and does not learn (measured on data=sines)
    positions: str = setting("sinusoidal", choices=("learned", "sinusoidal"))
    pooling: str = setting("cls", choices=("cls", "mean"))
    embed_size: int = setting(64, lo=1)  # text: the learned vector of each token id

    def problems(self) -> list[str]:
        if self.d_model % self.heads:
            return [
                f"model.d_model must be a multiple of model.heads. Got {self.d_model} and {self.heads}."
            ]
        if self.positions == "sinusoidal" and self.d_model % 2:
            return [f"model.d_model must be even for sinusoidal positions. Got {self.d_model}."]
        return []


@register_model("attention", schema=AttentionConfig, takes="sequence")
def build_attention(cfg: AttentionConfig, spec):
    from dlrun.nn import TransformerNet

    seq_len = spec.shape[0]  # (T, D), or (T,) token ids
    return TransformerNet(
        step_features(spec, cfg.embed_size),  # projected to d_model
        seq_len,
        spec.out_features,
        d_model=cfg.d_model,
        heads=cfg.heads,
        layers=cfg.layers,
        ff_size=cfg.ff_size,
        dropout=cfg.dropout,
        positions=cfg.positions,
        pooling=cfg.pooling,
        tokens=token_embedding(spec, cfg.embed_size),
    )
