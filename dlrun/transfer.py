"""Transfer learning: what a network's head is, so that starting from other weights
(`model.init_from`, pretrained torchvision weights), freezing (`trainer.freeze: [body]`) and
per-layer learning rates (`optim.head_lr_mult`, `optim.layer_decay`) all mean the same layers.
"""

from __future__ import annotations


def head_names(net) -> list[str]:
    """Names (as in `net.state_dict()`) of the head's parameters and buffers: the layer that
    makes the network's outputs. A network names it `head` (dlrun's sequence models do);
    otherwise it is the last layer with parameters in the network's own order (an MLP's or
    LeNet-5's last Linear, torchvision's `fc` or `classifier`'s last Linear)."""
    for prefix, module in net.named_modules():
        head = getattr(module, "head", None)
        if (
            head is not None
            and hasattr(head, "parameters")
            and any(True for _ in head.parameters())
        ):
            base = f"{prefix}.head" if prefix else "head"
            return [f"{base}.{name}" for name in head.state_dict()]
    last = None
    for prefix, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = prefix
    if last is None:
        return []
    module = net.get_submodule(last)
    return [f"{last}.{name}" if last else name for name in module.state_dict()]
