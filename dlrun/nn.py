"""Torch modules shared by the model builders (imported only when a torch model is built)."""

from __future__ import annotations

import math

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float() * self.std + self.mean  # (B, T)


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


class RecurrentNet(nn.Module):
    """nn.RNN / nn.GRU / nn.LSTM over the whole sequence in one call (cuDNN's fused kernels on a
    GPU), then a linear head on the last state or on pooled states."""

    def __init__(self, rnn: nn.RNNBase, pooling: str, out_features: int):
        super().__init__()
        self.rnn = rnn
        self.pooling = pooling
        directions = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(rnn.hidden_size * directions, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)  # out: (B, T, H * dirs)
        if self.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # (layers * dirs, B, H)
            dirs = 2 if self.rnn.bidirectional else 1
            feats = torch.cat(
                list(h_n[-dirs:]), dim=1
            )  # last layer, every direction: (B, H * dirs)
        elif self.pooling == "mean":
            feats = out.mean(dim=1)
        else:
            feats = out.amax(dim=1)
        return self.head(feats)


class TransformerNet(nn.Module):
    """A Transformer encoder over (B, T, D) sequences with a CLS token or mean pooling.

    `lengths` (B,) marks the real length of each padded sequence: padded steps are masked out of
    attention and out of the mean.
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
    ):
        super().__init__()
        self.pooling = pooling
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
        h = self.embed(x)  # (B, T, d)
        pad = None
        if lengths is not None:
            steps = torch.arange(x.shape[1], device=x.device)
            pad = steps.unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T), True where padded
        if self.pooling == "cls":
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + T, d)
            if pad is not None:
                pad = torch.cat([pad.new_zeros(pad.shape[0], 1), pad], dim=1)
        h = self.norm(self.encoder(self.positions(h), src_key_padding_mask=pad))
        if self.pooling == "cls":
            return self.head(h[:, 0])
        if pad is None:
            return self.head(h.mean(dim=1))
        keep = (~pad).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return self.head((h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1))


class RawInputs(nn.Module):
    """A trained network behind the preparation its inputs had in training, for export.

    It takes samples as the dataset loads them (float32; image pixels scaled to [0, 1]; for a
    table, its encoded feature columns) and returns what dlrun-predict reports: class
    probabilities, or values in the target's own units. Inside: the training split's
    normalization, LeNet-style resizing, and the reshape to the model's input.
    """

    def __init__(
        self, net: nn.Module, norm, resize_to, native: tuple, takes: str, kind: str, classes: bool
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *native)
        if self.normalize:
            x = (x - self.mean) / self.std
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
        out = self.net(x).float()
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
