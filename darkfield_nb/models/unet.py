"""One U-Net stage with three per-pixel heads: the generalized-Gaussian mean, scale and shape.

Layout (``depth`` = 4, ``base_width`` = 16)::

    encoder   conv-block(16) -> pool -> (32) -> pool -> (64) -> pool -> (128) -> pool -> (256)
    decoder   [dropout -> upsample x2 -> concat skip -> conv-block] x depth -> 1x1 heads

Upsampling (``config.upsample``): "resize" is nearest-neighbour x2 followed by a 3x3 convolution
(Odena et al. 2016), "transpose" a ``ConvTranspose2d(kernel 2, stride 2)`` (models saved before
the option existed). Every 3x3 convolution pads with ``config.padding_mode``: with "replicate" or
"reflect" a constant input gives exactly constant maps (no border can be told apart), which zero
padding does not.

Heads (``h`` the last decoder features):

    mu    = conv1x1(h)                                              (dark-field D, unconstrained)
    alpha = softplus(conv1x1(h)) + alpha_floor                      (scale, > 0)
    beta  = beta_min + (beta_max - beta_min) * sigmoid(conv1x1(h))  (shape, bounded)

Dropout (``config.dropout_placement``) acts on multi-channel feature maps, never on the 1-channel
outputs. Decoder slot ``drop[j]`` acts on the features entering up-convolution ``j`` (``j = 0``
the bottleneck, ``j = depth - 1`` the last decoder level); ``enc_drop[i]`` on the output of
encoder block ``i < depth`` (so both the skip connection and the next level see it):

=================== ===========================================
"decoder"           every ``drop[j]`` (the default; models saved before the option)
"last"              ``drop[depth - 1]`` only
"bottleneck"        ``drop[0]`` only
"encoder_decoder"   every ``drop[j]`` and every ``enc_drop[i]``
"head"              ``head_drop`` only: the last decoder features ``h`` entering the mean head
"head_reg"          as "head", plus train-time dropout at every decoder level
                    (:class:`TrainOnlyDropout`: a regularizer, never sampled)
=================== ===========================================

"head" is last-layer Monte Carlo dropout on the mean: the whole U-Net is a deterministic prefix
and only the 1x1 mean head sees dropped features (the scale and shape heads see ``h`` as it is),
so T passes cost little more than one. With a keep mask ``m_c ~ Bernoulli(1 - p) / (1 - p)``
per channel (channel dropout) or per channel and pixel (element dropout),
``mu_t = b + sum_c W_c m_c h_c`` and, in closed form,

    E_t[mu_t] = b + sum_c W_c h_c,      Var_t[mu_t] = p / (1 - p) * sum_c W_c^2 h_c^2,

which is what the Monte Carlo epistemic sigma estimates (``tests/test_models.py`` checks it).
"head_reg" trains like "decoder" (whose dropout regularizes the scale and shape heads: on the
shipped recipe "head" alone gave a worse test NLL and sigma-error ranking, ``bench/RESULTS.md``)
but Monte Carlo sampling, like any inference, leaves the decoder's train-time dropout off and
samples the mean head only: the passes cost what "head" costs.

Dropout layers have no parameters, so every placement has the same ``state_dict`` keys. Without
encoder dropout the encoder is a deterministic prefix that Monte Carlo dropout runs once per
image (:meth:`UNetStage.encode` / :meth:`UNetStage.decode` split the forward there); with it,
the prefix ends at the stage's input (:attr:`UNetStage.has_encoder_dropout`).
Head biases start at alpha ~ 0.1 and beta ~ 2 (near-Gaussian, a tenth of the D range).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig


class StageOutput(NamedTuple):
    """Per-pixel generalized-Gaussian parameters of one stage, each (B, 1, H, W)."""

    mu: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalization layer by name: "instance" | "batch" | "group" | "none"."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = math.gcd(8, channels)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r} must be one of instance, batch, group, none")


def conv_block(c_in: int, c_out: int, norm: str, padding_mode: str = "zeros") -> nn.Sequential:
    """Two 3x3 convolutions, each followed by normalization and LeakyReLU(0.2)."""
    bias = norm == "none"
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias, padding_mode=padding_mode),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias, padding_mode=padding_mode),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResizeConv2d(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution (resize-convolution)."""

    def __init__(self, in_channels: int, out_channels: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def upsample_layer(c_in: int, c_out: int, kind: str, padding_mode: str = "zeros") -> nn.Module:
    """x2 upsampling from ``c_in`` to ``c_out`` channels.

    "transpose": ``ConvTranspose2d(c_in, c_out, 2, stride=2)``; output pixel (2i + a, 2j + b)
    gets only kernel tap (a, b), so the four pixel parities are made by four different weights
    (a period-2 grid unless training equalizes them).
    "resize": ``Upsample(nearest, x2)`` then ``Conv2d(c_in, c_out, 3, padding=1)``: one kernel
    for every output pixel.
    """
    if kind == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
    if kind == "resize":
        return ResizeConv2d(c_in, c_out, padding_mode)
    raise ValueError(f"upsample={kind!r} must be 'resize' or 'transpose'")


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class UNetStage(nn.Module):
    """A U-Net mapping ``in_channels`` maps to a :class:`StageOutput`.

    Inputs must have H and W divisible by ``2**config.depth``
    (:class:`~darkfield_nb.models.ProgressiveGenerator` pads for you).
    """

    def __init__(self, in_channels: int, config: GeneratorConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * 2**i for i in range(config.depth + 1)]
        self.widths = widths
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(conv_block(c, w, config.norm, config.padding_mode))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.ModuleList(nn.Identity() for _ in range(config.depth))
        self.enc_drop = nn.ModuleList(nn.Identity() for _ in range(config.depth))
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(config.depth)):
            self.upconv.append(
                upsample_layer(widths[i + 1], widths[i], config.upsample, config.padding_mode)
            )
            self.up.append(conv_block(2 * widths[i], widths[i], config.norm, config.padding_mode))
        self.head_mu = nn.Conv2d(widths[0], 1, 1)
        self.head_alpha = nn.Conv2d(widths[0], 1, 1)
        self.head_beta = nn.Conv2d(widths[0], 1, 1)
        self.head_drop: nn.Module = nn.Identity()
        with torch.no_grad():
            self.head_alpha.bias.fill_(_inverse_softplus(max(0.1 - config.alpha_floor, 1e-3)))
            frac = (2.0 - config.beta_min) / (config.beta_max - config.beta_min)
            frac = min(max(frac, 0.05), 0.95)
            self.head_beta.bias.fill_(math.log(frac / (1 - frac)))
        self.set_dropout(dropout, config.dropout_kind, config.dropout_placement)

    def set_dropout(self, rate: float, kind: str, placement: str) -> None:
        """Put dropout of ``rate`` and ``kind`` at ``placement`` (see the module docstring) and
        ``nn.Identity`` in every other slot; ``rate = 0`` removes all dropout."""
        slots = dropout_slots(placement, self.config.depth)
        encoder = placement == "encoder_decoder"
        for j in range(self.config.depth):
            self.drop[j] = _make_dropout(rate if j in slots else 0.0, kind)
            self.enc_drop[j] = _make_dropout(rate if encoder else 0.0, kind)
        self.head_drop = _make_dropout(rate if placement in ("head", "head_reg") else 0.0, kind)
        if placement == "head_reg" and rate > 0:
            for j in range(self.config.depth):
                self.drop[j] = TrainOnlyDropout(rate, kind)

    @property
    def has_dropout(self) -> bool:
        """True when at least one dropout layer with a positive rate sits in this stage."""
        return any(_active(m) for m in [*self.drop, *self.enc_drop, self.head_drop])

    @property
    def has_encoder_dropout(self) -> bool:
        """True when an encoder block's output is dropped (the encoder is then not a
        deterministic prefix for Monte Carlo dropout)."""
        return any(_active(m) for m in self.enc_drop)

    def encode(self, inp: torch.Tensor, gate: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encoder features, finest first; the last one is the bottleneck.

        ``gate`` (B, 1, H, W), if given, multiplies every encoder level's output after resizing
        by average pooling: ``f <- f * gate_l``.
        """
        feats = []
        h = inp
        for i, block in enumerate(self.down):
            if i > 0:
                h = self.pool(h)
            h = block(h)
            if gate is not None:
                g = F.avg_pool2d(gate, 2**i) if i > 0 else gate
                h = h * g
            if i < len(self.enc_drop):
                h = self.enc_drop[i](h)
            feats.append(h)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> StageOutput:
        """Decoder (with dropout) and heads; ``feats`` as returned by :meth:`encode`."""
        h = feats[-1]
        for j, (drop, upconv, block) in enumerate(
            zip(self.drop, self.upconv, self.up, strict=True)
        ):
            skip = feats[-2 - j]
            h = block(torch.cat([upconv(drop(h)), skip], dim=1))
        return self.heads(h, self.head_drop(h))

    def heads(self, h: torch.Tensor, h_mean: torch.Tensor | None = None) -> StageOutput:
        """The three 1x1 heads (module docstring) on the last decoder features ``h``; the mean
        head reads ``h_mean`` instead when given (the features after ``head_drop``)."""
        mu = self.head_mu(h if h_mean is None else h_mean)
        return self.activate(mu, self.head_alpha(h), self.head_beta(h))

    def activate(self, mu: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> StageOutput:
        """The heads' outputs from their 1x1 convolutions ``mu``, ``a``, ``b``: alpha =
        softplus(a) + alpha_floor, beta = beta_min + (beta_max - beta_min) sigmoid(b)."""
        cfg = self.config
        alpha = F.softplus(a) + cfg.alpha_floor
        beta = cfg.beta_min + (cfg.beta_max - cfg.beta_min) * torch.sigmoid(b)
        return StageOutput(mu, alpha, beta)

    def forward(self, inp: torch.Tensor, gate: torch.Tensor | None = None) -> StageOutput:
        return self.decode(self.encode(inp, gate))


def dropout_slots(placement: str, depth: int) -> set[int]:
    """Decoder slots ``j`` of ``drop[j]`` that carry dropout for ``placement``."""
    if placement == "last":
        return {depth - 1}
    if placement == "bottleneck":
        return {0}
    if placement in ("decoder", "encoder_decoder"):
        return set(range(depth))
    if placement in ("head", "head_reg"):
        return set()
    raise ValueError(
        f"dropout_placement={placement!r} must be one of decoder, last, bottleneck, "
        "encoder_decoder, head, head_reg"
    )


class TrainOnlyDropout(nn.Module):
    """Dropout while training, identity otherwise, and never a Monte Carlo layer: it is not a
    ``torch.nn`` dropout module, so MC dropout (which switches those on and masks them) leaves
    it off. ``kind`` "channel" drops whole feature maps (``F.dropout2d``), "element" values."""

    def __init__(self, p: float, kind: str) -> None:
        super().__init__()
        self.p, self.kind = float(p), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.kind == "channel":
            return F.dropout2d(x, self.p, True)
        return F.dropout(x, self.p, True)

    def extra_repr(self) -> str:
        return f"p={self.p}, kind={self.kind}"


def _active(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0


def _make_dropout(p: float, kind: str) -> nn.Module:
    if p <= 0:
        return nn.Identity()
    return nn.Dropout2d(p) if kind == "channel" else nn.Dropout(p)
