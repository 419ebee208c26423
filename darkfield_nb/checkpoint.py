"""Checkpoints: atomic, versioned files that hold a trained generator and, for resuming, the
whole training state.

A checkpoint is a plain dict written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``, so loading never unpickles arbitrary objects: it holds
only tensors, numbers, strings, lists, tuples and dicts. Keys::

    format             "darkfield-nb-checkpoint" (the marker that says what the file is)
    format_version     FORMAT_VERSION; a reader refuses files newer than it understands
    package_version    darkfield_nb.__version__ of the writer
    generator_config   GeneratorConfig as a plain dict
    generator          the generator's state dict (float16 when saved with half=True)
    generator_dtype    "float32" or "float16"
    stage, epoch       0-based stage the checkpoint belongs to, epochs of it completed
    stages_trained     number of stages whose training is finished
    optimizer, discriminator, discriminator_config, disc_optimizer, scaler
                       state dicts (or None) for resuming
    history            list of per-epoch dicts (see darkfield_nb.train)
    train_config       the training settings as a plain dict (or None)
    rng                Python, NumPy and torch (CPU and CUDA) RNG states (or None)
    geometry           the training images' geometry: {"size": [H, W], "field_of_view_mm": F,
                       "pixel_mm": P} (absent in older checkpoints: :func:`checkpoint_geometry`
                       then returns DEFAULT_GEOMETRY, the geometry every such checkpoint was
                       trained on, 256 px over a 40 cm field)

Writes go through :func:`darkfield_nb.io.atomic_path`: an interrupted save leaves the
previous file intact, and a save that fails for want of space or permission raises
:class:`~darkfield_nb.io.WriteError` naming the file.

Reading checks more than the marker: :func:`load_checkpoint` also refuses a generator config
it cannot build, ``stage``/``epoch``/``stages_trained`` out of range, weights that do not fit
the config (missing stage weights, unexpected or wrongly shaped tensors: counts and the first
of each) and non-finite weights, every time with one line naming the file. So the generator of
a checkpoint that loads can always be rebuilt.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import darkfield_nb
from darkfield_nb.io import WriteError, atomic_path
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

FORMAT = "darkfield-nb-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "format_version",
    "generator_config",
    "generator",
    "stage",
    "epoch",
    "stages_trained",
)


class CheckpointError(ValueError):
    """A file that cannot be used as a darkfield-nb checkpoint (the message names the file)."""


# --------------------------------------------------------------------------------------------
# Training geometry
# --------------------------------------------------------------------------------------------

#: Field of view assumed when a data set does not say (the simulator's default, 40 cm).
DEFAULT_FIELD_OF_VIEW_MM = 400.0
#: Geometry of checkpoints that record none: every one of them (the shipped model included)
#: was trained on 256 x 256 simulated images of a 40 cm field, so 1.5625 mm pixels.
DEFAULT_GEOMETRY: dict[str, Any] = {
    "size": [256, 256],
    "field_of_view_mm": 400.0,
    "pixel_mm": 1.5625,
}


def make_geometry(
    size: tuple[int, int] | list[int] | int,
    field_of_view_mm: float | None = None,
    pixel_mm: float | None = None,
) -> dict[str, Any]:
    """The geometry entry of a checkpoint: ``{"size": [H, W], "field_of_view_mm": F,
    "pixel_mm": P}`` with ``F = max(H, W) * P``.

    Give the field of view or the pixel size (the other follows); with neither, the whole image
    is taken as a chest field of DEFAULT_FIELD_OF_VIEW_MM along its longer side.
    """
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"make_geometry: size {size!r} must be positive")
    if pixel_mm is None:
        fov = float(field_of_view_mm or DEFAULT_FIELD_OF_VIEW_MM)
        pixel_mm = fov / max(h, w)
    if not pixel_mm > 0:
        raise ValueError(f"make_geometry: pixel_mm={pixel_mm!r} must be positive")
    return {
        "size": [h, w],
        "field_of_view_mm": float(pixel_mm) * max(h, w),
        "pixel_mm": float(pixel_mm),
    }


def checkpoint_geometry(ckpt: dict) -> dict[str, Any]:
    """The training geometry recorded in a raw checkpoint dict, else DEFAULT_GEOMETRY."""
    geo = ckpt.get("geometry")
    if not geo:
        return dict(DEFAULT_GEOMETRY, size=list(DEFAULT_GEOMETRY["size"]))
    return make_geometry(
        geo["size"], pixel_mm=geo.get("pixel_mm"), field_of_view_mm=geo.get("field_of_view_mm")
    )


def dataset_geometry(data: Any) -> dict[str, Any] | None:
    """The geometry of a paired data set (a root folder or a dataset with ``.root``).

    ``dataset.json`` gives ``size`` and ``pixel_mm`` (or ``fov_cm``), as written by
    ``darkfield_nb.physics.generate_dataset``. Without them the size of the first attenuation
    image is used and the whole image is taken as a chest field of DEFAULT_FIELD_OF_VIEW_MM.
    None when nothing can be found (the checkpoint then records no geometry).
    """
    root = data if isinstance(data, (str, os.PathLike)) else getattr(data, "root", None)
    if root is None:
        return None
    root = Path(root)
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    size = meta.get("size")
    if size is None:
        from darkfield_nb.io import IMAGE_SUFFIXES, read_image

        images = sorted(
            p for p in (root / "attenuation").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            return None
        try:
            size = list(read_image(images[0]).shape)
        except (ValueError, ImportError):
            return None
    fov = meta.get("fov_cm")
    return make_geometry(
        size if not isinstance(size, (int, float)) else int(size),
        field_of_view_mm=None if fov is None else float(fov) * 10.0,
        pixel_mm=meta.get("pixel_mm"),
    )


# --------------------------------------------------------------------------------------------
# RNG states
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: First bytes of the files ``torch.save`` writes: a zip archive (the default since torch 1.6)
#: or a legacy pickle (protocol 2+ starts with 0x80).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _not_torch(path: Path, exc: Exception | None) -> CheckpointError:
    """One line for bytes ``torch.load`` cannot read, saying what the file looks like."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(_TORCH_MAGIC):
        shown = head[:12]
        text = shown.decode("ascii", "replace") if shown.isascii() else repr(shown)
        what = (
            f"it starts with {text!r}, a text file"
            if shown.isascii() and shown.decode("ascii").isprintable()
            else f"it starts with {shown!r}"
        )
        return CheckpointError(
            f"{path}: not a PyTorch checkpoint file ({what}; torch.save writes a zip archive)"
        )
    reason = _one_line(str(exc)).split(". ")[0] or "no further detail"  # torch adds advice
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint file (truncated or damaged: "
        f"{type(exc).__name__}: {reason[:200]})"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint as the raw dict described in the module docstring (for resuming).

    Uses ``torch.load(..., weights_only=True)``, then :func:`check_contents`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: one line naming the file: a directory, an empty file, not a PyTorch
            file (a text file, truncated or damaged bytes), a PyTorch file holding objects that
            weights-only loading refuses, a PyTorch file that is not a darkfield-nb checkpoint,
            a format version newer than this package reads, a checkpoint missing required
            entries, or contents that do not hold together (:func:`check_contents`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint file: empty file (0 bytes; an interrupted "
            "copy or download?)"
        )
    with open(path, "rb") as fh:
        if not fh.read(4).startswith(_TORCH_MAGIC):  # text, an image, ...: do not unpickle it
            raise _not_torch(path, None)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Weights only" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to load: the file holds a Python object{what} that safe "
                "(weights_only=True) loading does not allow; a darkfield-nb checkpoint holds "
                "only tensors and plain data"
            ) from exc
        raise _not_torch(path, exc) from exc
    except Exception as exc:  # torch raises many types for foreign bytes (KeyError, EOFError, ...)
        raise _not_torch(path, exc) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = (
            f"a dict with keys {sorted(map(str, ckpt))[:8]}"
            if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}"
        )
        raise CheckpointError(
            f"{path}: a PyTorch file but not a darkfield-nb checkpoint: it holds {what}, "
            f"without the marker format={FORMAT!r} (write checkpoints with "
            "darkfield_nb.checkpoint.save)"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} (written by darkfield-nb "
            f"{ckpt.get('package_version', '?')}) is newer than this darkfield-nb "
            f"{darkfield_nb.__version__} reads (up to {FORMAT_VERSION}); upgrade darkfield-nb"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing entries {missing}")
    problem = check_contents(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return ckpt


def _count(names: list[str], what: str) -> str:
    """``"3 missing (first: a.b)"``; ``"0 missing"`` for none."""
    return f"{len(names)} {what}" + (f" (first: {names[0]})" if names else "")


def check_contents(ckpt: dict) -> str | None:
    """The first reason the entries of a raw checkpoint dict do not hold together, or None.

    Checked: ``generator_config`` builds a :class:`GeneratorConfig`; ``stage`` is in
    ``0 .. n_stages - 1``, ``epoch >= 0`` and ``stages_trained`` in ``0 .. n_stages``; the
    ``generator`` state dict has exactly the tensors of a generator of that config, of the
    same shapes (counts of missing, unexpected and wrongly shaped tensors, with the first of
    each); every floating-point weight is finite. The generator is built on the ``meta``
    device for the comparison, so no memory is allocated for it.
    """
    raw = ckpt.get("generator_config")
    if not isinstance(raw, dict):
        return f"generator_config is a {type(raw).__name__}, expected a dict of settings"
    try:
        cfg = GeneratorConfig.from_stored_dict(dict(raw))
    except (ValueError, TypeError) as exc:
        return f"invalid generator_config: {_one_line(exc)}"
    n = cfg.n_stages
    ranges = (("stage", 0, n - 1), ("epoch", 0, None), ("stages_trained", 0, n))
    for key, low, high in ranges:
        value = ckpt.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} is {value!r}, expected an integer"
        if value < low or (high is not None and value > high):
            span = f"{low} .. {high}" if high is not None else f">= {low}"
            return f"{key}={value} is out of range ({span} for a {n}-stage generator)"
    state = ckpt.get("generator")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "generator is not a state dict of tensors"
    try:
        with torch.device("meta"):
            expected = {
                k: tuple(v.shape) for k, v in ProgressiveGenerator(cfg).state_dict().items()
            }
    except Exception as exc:  # a config the model code cannot build
        return f"generator_config cannot be built ({type(exc).__name__}: {_one_line(exc)})"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} stored {tuple(state[k].shape)}, config needs {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        stages_missing = sorted({k.split(".")[1] for k in missing if k.startswith("stages.")})
        hint = (
            f"; no weights for stage(s) {', '.join(stages_missing)}"
            if stages_missing and len(missing) == sum(k.startswith("stages.") for k in missing)
            else ""
        )
        return (
            "cannot rebuild the generator: its weights do not match its generator_config "
            f"(n_stages={n}, base_width={cfg.base_width}, depth={cfg.depth}): "
            f"{_count(missing, 'missing')}, {_count(unexpected, 'unexpected')}, "
            f"{_count(wrong, 'of the wrong shape')}{hint}"
        )
    bad = []
    n_bad = 0
    for k, v in state.items():
        # a sum is finite when every term is (one fast pass); count only when it is not
        if v.is_floating_point() and not torch.isfinite(v.float().sum()):
            count = int((~torch.isfinite(v)).sum())
            if count:
                bad.append(k)
                n_bad += count
    if bad:
        return (
            f"the generator weights hold {n_bad} non-finite value(s) (NaN/Inf) in "
            f"{_count(bad, 'tensor(s)')}; the run that wrote it diverged or the file is damaged"
        )
    return None


def float32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors cast to float32 (a ``half=True`` checkpoint
    stores float16 weights); integer buffers such as BatchNorm's counters are kept as they are."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def generator_from_checkpoint(
    ckpt: dict, device: str | torch.device = "cpu", *, source: str | os.PathLike | None = None
) -> nn.Module:
    """Rebuild the ProgressiveGenerator of a raw checkpoint dict (float32, eval mode).

    The model carries ``model.training_geometry``: :func:`checkpoint_geometry` of the dict,
    which ``darkfield_nb.synthesis.synthesize`` resamples every input to.

    A dict from :func:`load_checkpoint` always rebuilds (it was checked there). Any other dict
    is checked with :func:`check_contents` first.

    Raises:
        CheckpointError: one line naming ``source`` (default: "checkpoint") and the problem.
    """
    where = str(source) if source is not None else "checkpoint"
    try:
        problem = check_contents(ckpt)
    except Exception as exc:  # a dict of the wrong shape altogether
        problem = f"not a checkpoint dict ({type(exc).__name__}: {_one_line(exc)})"
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    try:
        model = ProgressiveGenerator(
            GeneratorConfig.from_stored_dict(dict(ckpt["generator_config"]))
        )
        model.load_state_dict(float32_state(ckpt["generator"]), strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{where}: cannot rebuild the generator ({_one_line(exc)[:300]})"
        ) from exc
    model.training_geometry = checkpoint_geometry(ckpt)
    return model.to(device).eval()


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load the generator stored in a checkpoint: a float32 ProgressiveGenerator in eval mode.

    ``load_checkpoint(path)["stages_trained"]`` says how many of its stages were trained.
    Errors as in :func:`load_checkpoint` (a state dict that does not fit the stored config,
    non-finite weights, ...: CheckpointError naming the file).
    """
    return generator_from_checkpoint(load_checkpoint(path), device, source=path)
