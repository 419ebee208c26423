"""Multi-process training with ``torch.distributed``, as launched by ``torchrun``.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m darkfield_nb.cli train ...`` starts N x M
processes and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each one's environment. :func:`init_distributed` reads them: with
``WORLD_SIZE > 1`` it joins the process group (NCCL when the process drives a GPU, Gloo on CPU)
and returns a :class:`DistContext`; otherwise a single-process context that makes every
collective a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from darkfield_nb.hardware import pick_device


@dataclass
class DistContext:
    """Rank and world size of this process; ``owns_group`` if :func:`init_distributed` created
    the process group (and :meth:`close` should destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over all processes (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return t

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def world_size_from_env() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(device: str | torch.device = "auto") -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; pick this process's device.

    Multi-process: ``device="auto"`` (or "cuda") uses ``cuda:LOCAL_RANK`` with NCCL when CUDA
    is available, otherwise the CPU with Gloo. An already initialised group is reused (and not
    destroyed by :meth:`DistContext.close`). Single process: ``pick_device(device)``.
    """
    world = world_size_from_env()
    if world <= 1:
        return DistContext(), pick_device(device)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = str(device)
    use_cuda = torch.cuda.is_available() and (want == "auto" or want.startswith("cuda"))
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    owns = False
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
                "(or set them for every process)"
            )
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns), dev
