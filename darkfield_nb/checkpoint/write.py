"""Writing checkpoints: atomic saves, the trained-model save, the resumable training state and
the RNG states."""

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import darkfield_nb
from darkfield_nb.io import WriteError, atomic_path

from .format import FORMAT, FORMAT_VERSION
from .geometry import make_geometry
from .read import float32_state

# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU, and CUDA when available) RNG states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (CUDA ones only if CUDA is present)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _config_dict(module: nn.Module | None, what: str) -> dict[str, Any] | None:
    if module is None:
        return None
    cfg = getattr(module, "config", None)
    if cfg is None:
        raise TypeError(
            f"checkpoint.save: the {what} has no .config; cannot record how to rebuild it"
        )
    return dict(cfg) if isinstance(cfg, dict) else cfg.to_dict()


def _state(obj) -> dict | None:
    return None if obj is None else obj.state_dict()


def _unwrap(module: nn.Module | None) -> nn.Module | None:
    """The module inside a DistributedDataParallel / torch.compile wrapper."""
    while module is not None:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    return module


def save(
    path: str | os.PathLike,
    generator: nn.Module,
    *,
    stage: int,
    epoch: int,
    stages_trained: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    discriminator: nn.Module | None = None,
    disc_optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    history: list[dict] | None = None,
    train_config: Any = None,
    rng: bool = True,
    half: bool = False,
    geometry: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path.

    Args:
        generator: the ProgressiveGenerator (a DDP or compiled wrapper is unwrapped); it must
            carry ``.config`` (a GeneratorConfig or a dict) so that :func:`load` can rebuild it.
        stage: 0-based stage the checkpoint belongs to; ``epoch``: epochs of it completed.
        stages_trained: stages whose training is finished (default ``stage + 1``: this
            stage counts as usable).
        optimizer, discriminator, disc_optimizer, scaler: optional training state.
        history: list of per-epoch dicts; ``train_config``: a dataclass with ``to_dict`` or a dict.
        rng: also store the Python, NumPy and torch RNG states (for an exact resume).
        half: store the generator's floating-point weights as float16 (half the size; for a
            shipped model). :func:`load` casts them back to float32.
        geometry: the training images' geometry (:func:`make_geometry`,
            :func:`dataset_geometry`); None records none.
    """
    generator = _unwrap(generator)
    discriminator = _unwrap(discriminator)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if train_config is not None and not isinstance(train_config, dict):
        train_config = train_config.to_dict()
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": darkfield_nb.__version__,
        "generator_config": _config_dict(generator, "generator"),
        "generator": state,
        "generator_dtype": "float16" if half else "float32",
        "stage": int(stage),
        "epoch": int(epoch),
        "stages_trained": int(stage + 1 if stages_trained is None else stages_trained),
        "optimizer": _state(optimizer),
        "discriminator": _state(discriminator),
        "discriminator_config": _config_dict(discriminator, "discriminator"),
        "disc_optimizer": _state(disc_optimizer),
        "scaler": _state(scaler),
        "history": [dict(h) for h in (history or [])],
        "train_config": train_config,
        "rng": rng_state() if rng else None,
    }
    if geometry is not None:
        ckpt["geometry"] = make_geometry(
            geometry["size"],
            field_of_view_mm=geometry.get("field_of_view_mm"),
            pixel_mm=geometry.get("pixel_mm"),
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write this way
            raise _save_error(path, exc) from exc
    return path


#: Free space below which a failed ``torch.save`` is reported as a full disk (bytes).
_FULL_DISK_BYTES = 64 * 2**20


def _save_error(path: Path, exc: RuntimeError) -> RuntimeError:
    """A :class:`WriteError` for a ``torch.save`` that failed writing (``PytorchStreamWriter
    failed ...``: full disk, quota, I/O error); any other RuntimeError is returned unchanged."""
    text = str(exc)
    if "PytorchStreamWriter" not in text and "write failed" not in text:
        return exc
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < _FULL_DISK_BYTES:
        why = f"no space left on the device ({free / 2**20:.1f} MiB free)"
        code = errno.ENOSPC
    else:
        why = "the write failed (disk full, quota exceeded or an I/O error)"
        code = errno.EIO
    return WriteError(code, f"{path}: cannot write the checkpoint: {why}")


def save_trained(
    path: str | os.PathLike,
    generator: nn.Module,
    *,
    stage: int,
    epoch: int,
    history: list[dict] | None = None,
    train_config: Any = None,
    geometry: dict[str, Any] | None = None,
) -> Path:
    """Save a generator whose stages ``0..stage`` are trained (``stages_trained = stage + 1``),
    without training state or RNG states: the ``stage{k}.pt`` / ``model.pt`` files.
    ``geometry``: the training images' geometry (see :func:`save`)."""
    return save(
        path,
        generator,
        stage=stage,
        epoch=epoch,
        stages_trained=stage + 1,
        history=history,
        train_config=train_config,
        rng=False,
        geometry=geometry,
    )


def save_training_state(
    path: str | os.PathLike,
    generator: nn.Module,
    *,
    stage: int,
    epoch: int,
    stage_done: bool,
    optimizer: torch.optim.Optimizer,
    discriminator: nn.Module,
    disc_optimizer: torch.optim.Optimizer,
    scaler: Any = None,
    history: list[dict] | None = None,
    train_config: Any = None,
) -> Path:
    """Save everything an exact resume needs after ``epoch`` epochs of ``stage`` (weights,
    both optimizers, the GradScaler, the history and the RNG states): the ``last.pt`` file.
    :func:`restore_training_state` reads it back. ``stages_trained`` counts ``stage`` only
    when ``stage_done``."""
    return save(
        path,
        generator,
        stage=stage,
        epoch=epoch,
        stages_trained=stage + 1 if stage_done else stage,
        optimizer=optimizer,
        discriminator=discriminator,
        disc_optimizer=disc_optimizer,
        scaler=scaler,
        history=history,
        train_config=train_config,
    )


def restore_training_state(
    ckpt: dict,
    generator: nn.Module,
    *,
    discriminator: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    disc_optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
) -> int:
    """Load a raw checkpoint (:func:`load_checkpoint`) into the given training objects and
    return its completed epoch count.

    The generator gets float32 weights; the discriminator, optimizers and scaler are loaded
    when both the object and its stored state exist; the Python, NumPy and torch RNG states
    are restored when stored (so a resumed run continues exactly).
    """
    generator.load_state_dict(float32_state(ckpt["generator"]))
    pairs = (
        (discriminator, "discriminator"),
        (optimizer, "optimizer"),
        (disc_optimizer, "disc_optimizer"),
        (scaler, "scaler"),
    )
    for obj, key in pairs:
        if obj is not None and ckpt.get(key) is not None:
            obj.load_state_dict(ckpt[key])
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"])
