"""The process context of a predict run: torchrun's process group, or a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class SingleProcess:
    """The context of a run without torchrun (the interface of ``train.DistContext``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    is_main: bool = True

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def process_context(device: str | torch.device = "auto"):
    """(context, device): under torchrun (``WORLD_SIZE > 1``) join the process group with
    ``train.distributed.init_distributed``; otherwise a :class:`SingleProcess` and
    ``pick_device(device)`` (without importing the training package: a quicker start)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from darkfield_nb.train.distributed import init_distributed

        return init_distributed(device)
    from darkfield_nb.hardware import pick_device

    return SingleProcess(), pick_device(device)
