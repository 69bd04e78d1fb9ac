"""Long short-term memory network (Hochreiter & Schmidhuber 1997), nn.LSTM."""

from __future__ import annotations

from dataclasses import dataclass

from dlrun.models.recurrent import RecurrentConfig, build_recurrent
from dlrun.registry import register_model


@dataclass
class LSTMConfig(RecurrentConfig):
    name: str = "lstm"
    # Initial bias of the forget gates. 1.0 (Gers et al. 2000; Jozefowicz et al. 2015) keeps the
    # cell remembering at the start of training, which long-range problems need; 0 is torch's.
    forget_bias: float = 1.0


@register_model("lstm", schema=LSTMConfig, takes="sequence")
def build_lstm(cfg: LSTMConfig, spec):
    import torch

    net = build_recurrent("lstm", cfg, spec)
    hidden = cfg.hidden_size
    with torch.no_grad():
        for name, bias in net.rnn.named_parameters():
            if name.startswith("bias_ih"):  # gates ordered input, forget, cell, output
                bias[hidden : 2 * hidden].fill_(cfg.forget_bias)
            elif name.startswith("bias_hh"):
                bias[hidden : 2 * hidden].zero_()
    return net
