"""Torch modules shared by the model builders (imported only when a torch model is built)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn


class TargetScaled(nn.Module):
    """Wraps a regression network so that it predicts in the target's own units.

    The network learns a standardized target (mean 0, std 1 on the training split), which keeps
    its output layer and learning rate well scaled whatever the target's units; this layer maps
    its output back, so losses, metrics and predictions are all in the data's units.
    """

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(x) if lengths is None else self.net(x, lengths)  # padded sequences
        return out.float() * self.std + self.mean  # (B, T)


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine position encodings (Vaswani et al. 2017), added to the input."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)  # (L, 1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
        self.register_buffer("table", table.unsqueeze(0))  # (1, L, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[:, : x.shape[1]]


class LearnedPositions(nn.Module):
    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[:, : x.shape[1]]


def valid_steps(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) bool, True on each sequence's first `lengths[i]` steps (the rest is padding).
    Computed on the device from the lengths there: nothing is read back to the host."""
    return torch.arange(steps, device=lengths.device) < lengths.unsqueeze(1)


def pool_steps(h: torch.Tensor, keep: torch.Tensor | None, how: str, dim: int) -> torch.Tensor:
    """Mean or max of `h` over its steps (`dim`), only where `keep` (broadcastable to `h`) is
    True; `keep` None: every step. Padded values never enter, whatever they hold."""
    if keep is None:
        return h.mean(dim) if how == "mean" else h.amax(dim)
    if how == "max":
        return h.masked_fill(~keep, float("-inf")).amax(dim)
    return h.masked_fill(~keep, 0).sum(dim) / keep.sum(dim).clamp(min=1)


class RecurrentNet(nn.Module):
    """nn.RNN / nn.GRU / nn.LSTM over the whole sequence (cuDNN's fused kernels on a GPU), then a
    linear head on the last state or on the states pooled over the steps. Token ids (B, T) are
    embedded first by `tokens` (an nn.Embedding).

    Variable lengths (`lengths`, the valid first steps of each padded sequence) are handled by
    masking, not by packing: pack_padded_sequence needs the lengths on the host, a
    synchronisation every step that also rules out capturing the step as a CUDA graph
    (dlrun.graphs), while masking reads nothing back. A forward direction at step t has only
    read steps <= t, so trailing padding never reaches a valid step: the last state is read at
    step length-1 and mean/max skip the padded steps. A backward direction would start in the
    padding, so a bidirectional net given lengths runs each layer's two directions as separate
    calls on the same weights, the backward one on every sequence reversed within its own length
    (a gather on the device): it starts at the sequence's last valid step, as it would on that
    sequence alone. The price: padded steps are computed (packing skips them), which counts
    only where lengths vary a lot; in exchange a whole training step stays one graph replay.
    """

    static_graph = True  # no host reads, with or without lengths (see above)

    def __init__(self, rnn: nn.RNNBase, pooling: str, out_features: int, tokens=None):
        super().__init__()
        self.tokens = tokens  # nn.Embedding for token ids, or None for features
        self.rnn = rnn
        self.pooling = pooling
        directions = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(rnn.hidden_size * directions, out_features)
        if rnn.bidirectional:
            # Weightless one-layer, one-direction twins (first layer, deeper layers) that run
            # this net's own weights through torch.func.functional_call; kept in a list so that
            # they are not submodules (no parameters, nothing in the state dict).
            extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
            self._one_way = [
                type(rnn)(size, rnn.hidden_size, 1, batch_first=True, device="meta", **extra)
                for size in (rnn.input_size, 2 * rnn.hidden_size)
            ]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.tokens is not None:
            x = self.tokens(x)  # (B, T) token ids -> (B, T, E)
        batch, steps = x.shape[:2]
        if lengths is not None:
            lengths = lengths.to(x.device, torch.long)
        if lengths is None or not self.rnn.bidirectional:
            out, _ = self.rnn(x)  # (B, T, H * dirs)
        else:
            out = self._both_ways(x, lengths)
        hidden = self.rnn.hidden_size
        if self.pooling == "last":
            rows = torch.arange(batch, device=x.device)
            last = steps - 1 if lengths is None else lengths - 1  # (B,)
            feats = out[rows, last, :hidden]  # forward direction after its last step: (B, H)
            if self.rnn.bidirectional:  # the backward direction ends at step 0
                feats = torch.cat([feats, out[:, 0, hidden:]], dim=1)  # (B, 2H)
        else:
            keep = None if lengths is None else valid_steps(lengths, steps).unsqueeze(2)
            feats = pool_steps(out, keep, self.pooling, dim=1)  # (B, H * dirs)
        return self.head(feats)

    def _both_ways(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The bidirectional stack, layer by layer, with padding after each sequence's end:
        (B, T, D) -> (B, T, 2H), exact on the valid steps."""
        from torch.func import functional_call

        steps = torch.arange(x.shape[1], device=x.device)
        ends = lengths.unsqueeze(1)  # (B, 1)
        # (B, T): step t of the reversed sequence is step length-1-t; padded steps stay put.
        # Reversing twice gives the sequence back, so the same gather undoes it.
        order = torch.where(steps < ends, ends - 1 - steps, steps)

        def reverse(h):
            return h.gather(1, order.unsqueeze(2).expand_as(h))

        def one_way(layer: int, suffix: str, h: torch.Tensor) -> torch.Tensor:
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            weights = {f"{n}_l0": getattr(self.rnn, f"{n}_l{layer}{suffix}") for n in names}
            twin = self._one_way[min(layer, 1)].train(self.rnn.training)
            with warnings.catch_warnings():
                # On a GPU, cuDNN copies a slice of the net's flat weight buffer into one of
                # its own (one layer's weights: small next to the activations) and warns, with
                # advice (flatten_parameters) that does not apply to a slice.
                warnings.filterwarnings("ignore", "RNN module weights are not part of single")
                return functional_call(twin, weights, (h,))[0]  # (B, T, H)

        h = x
        for layer in range(self.rnn.num_layers):
            if layer and self.rnn.dropout:  # as nn.RNN: between layers, in training
                h = nn.functional.dropout(h, self.rnn.dropout, self.rnn.training)
            forward = one_way(layer, "", h)
            backward = reverse(one_way(layer, "_reverse", reverse(h)))
            h = torch.cat([forward, backward], dim=2)  # (B, T, 2H)
        return h


class TransformerNet(nn.Module):
    """A Transformer encoder over (B, T, D) sequences, or (B, T) token ids embedded first by
    `tokens` (an nn.Embedding), with a CLS token or mean pooling.

    `lengths` (B,) marks the real length of each padded sequence (its first steps): padded steps
    are masked out of attention as keys and out of the mean; positions count from each
    sequence's start (the CLS token first), so a padded sequence sees what it sees alone.
    """

    def __init__(
        self,
        in_features: int,
        seq_len: int,
        out_features: int,
        *,
        d_model: int,
        heads: int,
        layers: int,
        ff_size: int,
        dropout: float,
        positions: str,
        pooling: str,
        tokens: nn.Embedding | None = None,
    ):
        super().__init__()
        self.pooling = pooling
        self.tokens = tokens
        self.embed = nn.Linear(in_features, d_model)
        extra = 1 if pooling == "cls" else 0
        if pooling == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        make = SinusoidalPositions if positions == "sinusoidal" else LearnedPositions
        self.positions = make(seq_len + extra, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff_size, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.tokens is not None:
            x = self.tokens(x)  # (B, T) token ids -> (B, T, E)
        h = self.embed(x)  # (B, T, d)
        pad = None
        if lengths is not None:
            lengths = lengths.to(x.device, torch.long)
            pad = ~valid_steps(lengths, x.shape[1])  # (B, T), True where padded
        if self.pooling == "cls":
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + T, d)
            if pad is not None:
                pad = torch.cat([pad.new_zeros(pad.shape[0], 1), pad], dim=1)  # (B, 1 + T)
        h = self.norm(self.encoder(self.positions(h), src_key_padding_mask=pad))
        if self.pooling == "cls":
            return self.head(h[:, 0])
        keep = None if pad is None else ~pad.unsqueeze(2)  # (B, T, 1)
        return self.head(pool_steps(h, keep, "mean", dim=1))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch normalization over (B, C, T) whose training statistics count only the valid steps
    (`keep` (B, 1, T) True), so that a batch's padding neither shifts them nor makes one
    sequence's normalization depend on how long the others are. Evaluation normalizes each step
    with the running statistics, as nn.BatchNorm1d; the state dict is the same."""

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if keep is None or not self.training:
            return super().forward(h)
        x, w = h.float(), keep.float()  # statistics in float32, also under bf16/fp16 autocast
        count = w.sum()  # valid steps in the batch, a 0-d tensor
        mean = (x * w).sum((0, 2)) / count  # (C,)
        var = ((x - mean[:, None]).square() * w).sum((0, 2)) / count  # (C,), biased
        with torch.no_grad():  # running statistics as nn.BatchNorm1d keeps them (unbiased var)
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1).clamp(min=1), self.momentum)
        out = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)  # (B, C, T)
        return (out * self.weight[:, None] + self.bias[:, None]).to(h.dtype)


class ConvBlock1d(nn.Module):
    """Conv1d ('same' length) -> batch norm -> activation -> dropout, then optionally a pooling
    stage, on (B, C, T) with the valid steps `keep` (B, 1, T) (None: all of them).

    A 'same' convolution reads up to (kernel_size-1)/2 * dilation steps beyond each end. Alone,
    a sequence is padded with zeros there; in a batch its padding must then be zeros too: the
    block zeroes the padded steps of its input, so its valid outputs equal those of the sequence
    alone. Pooling windows (ceil mode: a last partial window counts) see only valid steps, and
    a sequence of length n keeps ceil(n / size) steps.
    """

    def __init__(self, conv: nn.Conv1d, norm, act: nn.Module, dropout: float, pool: str, size: int):
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, act
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.pool, self.size = pool, size

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None):
        if keep is not None:
            h = h.masked_fill(~keep, 0)
        h = self.conv(h)  # (B, C', T)
        if self.norm is not None:
            h = self.norm(h, keep)
        h = self.act(h)
        if self.drop is not None:
            h = self.drop(h)
        if self.pool == "none":
            return h, keep
        f = nn.functional
        if keep is None:
            pool = f.max_pool1d if self.pool == "max" else f.avg_pool1d
            return pool(h, self.size, ceil_mode=True), None  # (B, C', ceil(T / size))
        if self.pool == "max":
            h = f.max_pool1d(h.masked_fill(~keep, float("-inf")), self.size, ceil_mode=True)
        else:  # the mean of each window's valid steps
            counts = f.avg_pool1d(keep.to(h.dtype), self.size, ceil_mode=True)
            h = f.avg_pool1d(h.masked_fill(~keep, 0), self.size, ceil_mode=True)
            h = h / counts.clamp(min=1e-6)
        lengths = keep.sum(2).squeeze(1)  # (B,)
        lengths = (lengths + self.size - 1) // self.size  # ceil: a partial window counts
        keep = valid_steps(lengths, h.shape[2]).unsqueeze(1)  # (B, 1, T')
        return h.masked_fill(~keep, 0), keep


class CNN1dNet(nn.Module):
    """Stacked 1-D convolution blocks over (B, T, D) sequences, or (B, T) token ids embedded
    first by `tokens` (an nn.Embedding), then global mean or max pooling over the valid steps
    and a linear head. Padding never changes a sequence's output (see ConvBlock1d); nothing is
    read back to the host."""

    def __init__(self, blocks, global_pooling: str, head: nn.Linear, tokens=None):
        super().__init__()
        self.tokens = tokens
        self.blocks = nn.ModuleList(blocks)
        self.global_pooling = global_pooling
        self.head = head

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.tokens is not None:
            x = self.tokens(x)  # (B, T) token ids -> (B, T, E)
        h = x.transpose(1, 2)  # (B, D, T): channels first for Conv1d
        keep = None
        if lengths is not None:
            lengths = lengths.to(x.device, torch.long)
            keep = valid_steps(lengths, h.shape[2]).unsqueeze(1)  # (B, 1, T)
        for block in self.blocks:
            h, keep = block(h, keep)  # (B, C, T'), T' after its pooling
        return self.head(pool_steps(h, keep, self.global_pooling, dim=2))  # (B, out)


class RawInputs(nn.Module):
    """A trained network behind the preparation its inputs had in training, for export.

    It takes samples as the dataset loads them (float32; image pixels scaled to [0, 1]; for a
    table, its encoded feature columns; for text, token ids) and returns what dlrun-predict
    reports: class probabilities, or values in the target's own units. Inside: the training
    split's normalization, LeNet-style resizing, the reshape to the model's input, a text's bag
    of tokens for a flat model. With `lengths` (padded sequences: each sample's valid steps),
    padding is zeroed after normalization, as in training, and the network reads the lengths.
    """

    def __init__(
        self,
        net: nn.Module,
        norm,
        resize_to,
        native: tuple,
        takes: str,
        kind: str,
        classes: bool,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.net = net
        self.normalize = norm is not None
        if norm is not None:
            self.register_buffer("mean", torch.as_tensor(norm[0], dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(norm[1], dtype=torch.float32))
        self.resize_to = resize_to
        self.native = tuple(native)
        self.takes, self.kind, self.classes = takes, kind, classes
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.vocab_size is not None and self.takes == "flat":  # (B, T) ids -> (B, V) counts
            counts = torch.zeros(x.shape[0], self.vocab_size, dtype=torch.float32, device=x.device)
            x = counts.scatter_add(1, x, torch.ones_like(x, dtype=torch.float32))
            x = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1)  # padding is not counted
        if self.normalize:
            x = (x - self.mean) / self.std
        if lengths is not None and self.vocab_size is None:  # padding stays zero
            keep = valid_steps(lengths, x.shape[1])  # (B, T)
            x = x * keep.reshape(*keep.shape, *([1] * (x.dim() - 2))).to(x.dtype)
        if self.resize_to is not None:
            size = (self.resize_to, self.resize_to)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.takes == "flat":
            x = x.flatten(1)  # (B, F)
        elif self.takes == "sequence" and self.kind == "image":
            _, h, w = x.shape[1:]
            x = x.permute(0, 2, 1, 3).reshape(
                -1, h, x.shape[1] * w
            )  # image rows as steps (B, H, C*W)
        out = (self.net(x) if lengths is None else self.net(x, lengths)).float()
        return torch.softmax(out, dim=1) if self.classes else out


class AutoEncoderNet(nn.Module):
    """An autoencoder (dlrun.models.autoencoder): `encoder` (x -> latent; for a VAE, its mean
    and log-variance side by side) and `decoder` (latent -> x, flat, reshaped here)."""

    def __init__(self, encoder, decoder, shape, latent_size: int, variational: bool):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.shape, self.latent_size, self.variational = tuple(shape), latent_size, variational

    def encode(self, x: torch.Tensor):
        """The latent (B, latent_size); for a VAE, (mean, log-variance)."""
        h = self.encoder(x)
        return h.chunk(2, dim=1) if self.variational else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(-1, *self.shape)  # (B, *shape)

    def forward(self, x: torch.Tensor):
        """Autoencoder: the reconstruction. VAE: (reconstruction, mean, log-variance), decoded
        from a sample of the latent in training (the reparameterisation trick) and from its
        mean in evaluation."""
        if not self.variational:
            return self.decode(self.encode(x))
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return self.decode(z), mean, logvar


class GANNet(nn.Module):
    """A generator and a discriminator (dlrun.models.gan). `model(x)` is the discriminator's
    logit per sample (B,); `generate(z)` gives samples as the data's own look to the networks
    (normalized). An image generator makes pixels in [0, 1] (a sigmoid), normalized here with
    the training split's statistics (`set_scale`, saved with the weights)."""

    def __init__(self, generator, discriminator, shape, latent_size: int, image: bool):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.shape, self.latent_size, self.image = tuple(shape), latent_size, image
        self.register_buffer("mean", torch.zeros(1, *self.shape))
        self.register_buffer("std", torch.ones(1, *self.shape))

    def set_scale(self, norm) -> None:
        if norm is not None:
            for buffer, value in zip((self.mean, self.std), norm, strict=True):
                buffer.copy_(torch.as_tensor(value, dtype=torch.float32).expand_as(buffer))

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W), or a table's normalized values."""
        out = self.generator(z).reshape(-1, *self.shape)
        return torch.sigmoid(out) if self.image else out

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        out = self.pixels(z)
        return (out - self.mean) / self.std if self.image else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x).reshape(-1)  # (B,) logits: real > 0 > generated


class Generated(nn.Module):
    """The generative half of a trained autoencoder, VAE or GAN, for dlrun-predict and export:
    latent vectors (B, latent_size) -> samples in the data's own scale (image pixels in [0, 1],
    a table in its columns' units). For a VAE or a GAN the latent is drawn from N(0, I)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.gan = isinstance(model, GANNet)
        self.vae_image = not self.gan and model.variational and len(model.shape) == 3
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    @property
    def latent_size(self) -> int:
        return self.model.latent_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.gan:
            out = self.model.pixels(z).float()
            return out if self.model.image else out * self.std + self.mean
        out = self.model.decode(z).float()
        if self.vae_image:
            return torch.sigmoid(out)  # the pixels' Bernoulli means, in [0, 1]
        return out * self.std + self.mean


class Pretrained(nn.Module):
    """A pretrained torchvision network (dlrun.models.pretrained) behind the input preparation
    its weights expect: a grayscale image's channel read as R, G and B, then the weights'
    per-channel mean and std on pixels in [0, 1]. `load_pretrained()` loads the weights into
    every layer but the head, new for the data (a new run; a checkpoint's weights replace
    them otherwise)."""

    def __init__(self, net: nn.Module, mean, std, start=None):
        super().__init__()
        self.net = net
        self.start = start  # start(net): loads the pretrained weights; None: none
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), C = 1 or 3
        x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W): grayscale repeated, RGB as it is
        return self.net((x - self.mean) / self.std)  # (B, out)

    def load_pretrained(self) -> None:
        if self.start is not None:
            self.start(self.net)
