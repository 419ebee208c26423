"""Instance normalization computed in the input's own memory layout, for inference on a CPU.

PyTorch's ``InstanceNorm2d`` runs batch norm on a (1, B*C, H, W) view of its input, which a
channels_last tensor does not have: it copies the input to the contiguous layout and the output
back (a fifth of the Monte Carlo decoder's time on the shipped model, channels_last, CPU). Here
(eval behaviour: statistics of the input, biased variance)::

    y = gamma (x - mean_HW) / sqrt(var_HW + eps) + beta = x * scale + shift,
    scale = gamma / sqrt(var_HW + eps),  shift = beta - mean_HW * scale

with mean and variance per image and channel, float32, in one pass (``torch.var_mean``).
:func:`layout_preserving_norms` swaps this in for the affine ``InstanceNorm2d`` modules without
running statistics of a model, inside a ``with`` block, and puts the modules back on exit.
Anything else (another dtype, autocast, running statistics) takes the module's own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def instance_norm(norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` (module docstring) in x's memory layout."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    scale = norm.weight.view(1, -1, 1, 1) * torch.rsqrt(var + norm.eps)
    shift = norm.bias.view(1, -1, 1, 1) - mean * scale
    return torch.addcmul(shift, x, scale)


def _applies(norm: nn.Module) -> bool:
    return isinstance(norm, nn.InstanceNorm2d) and norm.affine and not norm.track_running_stats


@contextlib.contextmanager
def layout_preserving_norms(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s affine instance norms without running statistics use
    :func:`instance_norm` for float32 4-D inputs outside autocast (module docstring)."""
    swapped = []

    def make(norm: nn.InstanceNorm2d, own):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 4 or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
                return own(x)
            return instance_norm(norm, x)

        return forward

    try:
        for m in model.modules():
            if _applies(m) and "forward" not in m.__dict__:
                m.forward = make(m, m.forward)
                swapped.append(m)
        yield
    finally:
        for m in swapped:
            del m.forward
