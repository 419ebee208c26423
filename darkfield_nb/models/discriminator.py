"""Conditional PatchGAN discriminator (pix2pix's 70x70 design, input and output together).

Layers (``width`` = 64, ``n_layers`` = 3)::

    C64(stride 2, no norm) - C128(s2) - C256(s2) - C512(s1) - conv to 1 logit map

all 4x4 convolutions with LeakyReLU(0.2); each logit sees a 70x70 patch of [x, y].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .config import DiscriminatorConfig
from .unet import make_norm


class PatchDiscriminator(nn.Module):
    """``D(x, y)`` -> logits (B, 1, h, w), one per patch; x the input, y real or generated."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else DiscriminatorConfig()

        def conv(c_in: int, c_out: int, stride: int, bias: bool = True) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=bias)
            return spectral_norm(layer) if cfg.norm == "spectral" else layer

        # spectral normalization sits on the convolutions, so no normalization layer
        layer_norm = "none" if cfg.norm == "spectral" else cfg.norm

        layers: list[nn.Module] = [
            conv(cfg.in_channels + cfg.out_channels, cfg.width, 2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        c = cfg.width
        for i in range(1, cfg.n_layers + 1):
            c_out = cfg.width * min(2**i, 8)
            stride = 2 if i < cfg.n_layers else 1
            layers += [
                conv(c, c_out, stride),
                make_norm(layer_norm, c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c = c_out
        layers.append(conv(c, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != y.shape[-2:] or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"PatchDiscriminator: input {tuple(x.shape)} and image {tuple(y.shape)} "
                "must share batch size and H, W"
            )
        return self.net(torch.cat([x, y], dim=1))
