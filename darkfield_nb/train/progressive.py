"""Training every stage in order: stage 0, freeze it, stage 1 guided by stage 0, and so on.

Files in ``out_dir`` (written by rank 0 only)::

    last.pt            the whole training state after the last completed epoch (for resume)
    stage{k}.pt        the generator after stage k finished
    model.pt           the final generator (all stages trained)
    history.csv/json   one record per epoch of every stage

Before any work, rank 0 checks what would otherwise fail late: the ``train`` and ``val`` splits
are not empty (``data.require_splits``), the run folder can be written
(``io.check_writable_dir``), every image is readable and at least ``model.stride + 1`` pixels
on a side, and ``resume`` has a ``last.pt`` to resume. Each problem is one line naming the file
or folder. Temporary files a killed write left in the run folder are removed (and named in a
``UserWarning``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from darkfield_nb import checkpoint
from darkfield_nb.data import Augment, PairedDataset, require_splits
from darkfield_nb.io import (
    STALE_AFTER_S,
    check_writable_dir,
    clean_stale_temporaries,
    is_temporary,
    stale_temporaries,
)
from darkfield_nb.models import ProgressiveGenerator, build_generator

from .config import TrainConfig
from .distributed import init_distributed
from .stage import LAST_CHECKPOINT, make_discriminator, stage_checkpoint_name, train_stage

FINAL_CHECKPOINT = "model.pt"


@dataclass
class TrainResult:
    """What :func:`train_progressive` returns: the trained generator (eval mode), the history
    (one dict per epoch), the run folder and the final checkpoint's path."""

    model: ProgressiveGenerator
    history: list[dict]
    out_dir: Path
    checkpoint: Path


def make_datasets(
    data_root: str | os.PathLike, cfg: TrainConfig
) -> tuple[PairedDataset, PairedDataset]:
    """The training split (random ``cfg.crop_size`` crops, augmentation) and the validation
    split (whole images, no augmentation) of a data folder. No padding: the generator pads
    internally and crops its outputs back.

    Every image of the folder (validation images included) is read and checked here, before
    any training: unreadable files, constant inputs and images smaller than
    ``cfg.model.stride + 1`` pixels on a side (the smallest the generator takes) are refused
    with a ``ValueError`` listing each file and its problem."""
    augment = Augment(seed=cfg.seed) if cfg.augment else None
    min_side = cfg.model.stride + 1
    train = PairedDataset(
        data_root,
        split="train",
        augment=augment,
        pad_multiple=1,
        crop_size=cfg.crop_size,
        cache=cfg.cache_data,
        min_side=min_side,
    )  # check=True: inspects every split's images, so the validation images are checked too
    val = PairedDataset(
        data_root,
        split="val",
        pad_multiple=1,
        cache=cfg.cache_data,
        check=False,
        min_side=min_side,
    )
    return train, val


def save_final(
    out_dir: Path,
    model: ProgressiveGenerator,
    history: list[dict],
    cfg: TrainConfig,
    geometry: dict | None = None,
) -> Path:
    """Write ``out_dir/model.pt``: ``model`` with all its stages trained (``cfg`` gives the
    last stage's epoch count and is stored with it; ``geometry`` the training images'
    geometry, :func:`darkfield_nb.checkpoint.dataset_geometry`)."""
    last = model.config.n_stages - 1
    return checkpoint.save_trained(
        out_dir / FINAL_CHECKPOINT,
        model,
        stage=last,
        epoch=cfg.schedule(last).epochs,
        history=history,
        train_config=cfg,
        geometry=geometry,
    )


def _config_mismatch(a: TrainConfig, b: TrainConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: given {da.get(k)!r}, stored {db.get(k)!r}" for k in da if da.get(k) != db.get(k)]


#: How to resume with the stored settings, for command-line and Python users alike.
RESUME_WITH_STORED = (
    "to resume with the stored settings, give no training flags "
    "(command line: only --data, --out and --resume; Python: config=None)"
)


def _nothing_to_resume(out_dir: Path) -> FileNotFoundError:
    """Why ``resume`` cannot continue in ``out_dir``: one line naming what is missing."""
    last = out_dir / LAST_CHECKPOINT
    if not out_dir.exists():
        found = "the folder does not exist"
    elif not out_dir.is_dir():
        found = "it is a file, not a run folder"
    else:
        stem = Path(LAST_CHECKPOINT).stem
        killed = [
            p.name
            for p in stale_temporaries(out_dir, max_age_s=0, recursive=False)
            if p.name.startswith(f".{stem}.")
        ]
        present = sorted(p.name for p in out_dir.glob("*.pt") if not is_temporary(p))
        found = f"no {LAST_CHECKPOINT} in it"
        if killed:
            found += (
                f"; {killed[0]} is a partial {LAST_CHECKPOINT} left by a write that was killed "
                "before the first epoch's checkpoint was complete"
            )
        if present:
            found += f"; it holds {', '.join(present)}"
    return FileNotFoundError(
        f"{out_dir}: nothing to resume: {found} ({last.name} is written after each completed "
        "epoch); start a new run without --resume (Python: resume=False)"
    )


def _resume_state(
    out_dir: Path, config: TrainConfig | None, resume: bool
) -> tuple[dict | None, TrainConfig | None]:
    """(checkpoint to resume or None, config to use) for ``out_dir``; see train_progressive."""
    last = out_dir / LAST_CHECKPOINT
    if not last.exists():
        if resume:
            raise _nothing_to_resume(out_dir)
        return None, config
    if not resume:
        raise FileExistsError(
            f"{out_dir}: already holds a training run ({LAST_CHECKPOINT}); pass --resume "
            "(Python: resume=True) to continue it, or choose another output folder"
        )
    ckpt = checkpoint.load_checkpoint(last)
    if not isinstance(ckpt.get("train_config"), dict):
        raise checkpoint.CheckpointError(
            f"{last}: holds no training settings (train_config); it was not written by "
            "train_progressive and cannot be resumed"
        )
    try:
        stored = TrainConfig.from_dict(ckpt["train_config"])
    except (ValueError, TypeError) as exc:
        raise checkpoint.CheckpointError(
            f"{last}: its training settings (train_config) are invalid: {exc}"
        ) from exc
    if config is None:
        return ckpt, stored
    diff = _config_mismatch(config, stored)
    if diff:
        raise ValueError(
            f"{last}: the given training settings differ from the run being resumed: "
            + "; ".join(diff)
            + f"; {RESUME_WITH_STORED}"
        )
    return ckpt, config


def _prepare_run(
    data_root: str | os.PathLike, out_dir: Path, config: TrainConfig | None, resume: bool
) -> tuple[dict | None, TrainConfig | None]:
    """Rank 0's checks before any work; returns :func:`_resume_state`'s pair."""
    require_splits(data_root)
    decided = _resume_state(out_dir, config, resume)
    check_writable_dir(out_dir)
    # a resumed run declares the earlier one dead: every temporary of ours is stale
    removed = clean_stale_temporaries(
        out_dir, max_age_s=0 if resume else STALE_AFTER_S, recursive=False
    )
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        warnings.warn(
            f"{out_dir}: removed {len(removed)} temporary file(s) left by an interrupted "
            f"write: {names}",
            UserWarning,
            stacklevel=3,
        )
    return decided


def train_progressive(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    on_step=None,
) -> TrainResult:
    """Train stages 0 .. n-1 of a ProgressiveGenerator on ``data_root``; write into ``out_dir``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs this function: it joins the
    process group, trains with DistributedDataParallel and a DistributedSampler, writes files
    on rank 0 only and leaves the group at the end.

    Args:
        data_root: a data folder following the contract (train and val splits are used).
        out_dir: the run folder; it must not hold a run already unless ``resume``.
        config: training settings (default ``TrainConfig()``). With ``resume`` and None, the
            settings stored in ``last.pt`` are used; given ones must equal the stored ones.
        resume: continue the run in ``out_dir`` from the last completed epoch of its last
            unfinished stage; refused when ``out_dir`` holds no ``last.pt``.
        device: "auto", "cpu", "cuda", ...; under torchrun "auto" means ``cuda:LOCAL_RANK``.
        progress: tqdm progress bars and one line per epoch (rank 0).
        on_step: see :func:`~darkfield_nb.train.train_stage`.

    Returns:
        TrainResult(model, history, out_dir, checkpoint).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` but ``out_dir`` holds no ``last.pt`` (the message says
            what the folder holds, e.g. a partial ``last.pt`` left by a killed write).
        ValueError: ``config`` differs from the settings of the run being resumed;
            ``EmptySplitError`` (a ValueError): the ``train`` or ``val`` split is empty; a data
            set problem (one line per file).
        WriteError: ``out_dir`` cannot be written (checked before training).
        CheckpointError: ``last.pt`` cannot be used.
        NonFiniteLossError: see :func:`~darkfield_nb.train.train_stage`.
    """
    out_dir = Path(out_dir)
    ctx, dev = init_distributed(device)
    try:
        # rank 0 decides (fresh start, resume, or refusal) and tells the others, so that every
        # process resumes the same state even where only rank 0 sees the run folder
        decision: tuple = ("ok", None, config)
        if ctx.is_main:
            try:
                decision = ("ok", *_prepare_run(data_root, out_dir, config, resume))
            except (OSError, ValueError) as exc:  # WriteError, CheckpointError, ... included
                decision = ("error", exc, None)
        if ctx.enabled:
            box = [decision]
            dist.broadcast_object_list(box, src=0)
            decision = box[0]
        if decision[0] == "error":
            raise decision[1]
        _, ckpt, config = decision
        cfg = config if config is not None else TrainConfig()
        train_ds, val_ds = make_datasets(data_root, cfg)
        torch.manual_seed(cfg.seed)
        model = build_generator(cfg.model)
        history: list[dict] = []
        start_stage, resume_state = 0, None
        if ckpt is not None:
            model.load_state_dict(checkpoint.float32_state(ckpt["generator"]))
            history = list(ckpt["history"])
            s, e = int(ckpt["stage"]), int(ckpt["epoch"])
            if e >= cfg.schedule(s).epochs:  # stage s was finished
                start_stage = s + 1
                if ctx.is_main and not (out_dir / stage_checkpoint_name(s)).exists():
                    checkpoint.save_trained(
                        out_dir / stage_checkpoint_name(s),
                        model,
                        stage=s,
                        epoch=e,
                        history=history,
                        train_config=cfg,
                        geometry=checkpoint.dataset_geometry(train_ds),
                    )
            else:
                start_stage, resume_state = s, ckpt
        for k in range(start_stage, cfg.n_stages):
            disc = make_discriminator(cfg, k)
            history = train_stage(
                model,
                k,
                train_ds,
                val_ds,
                cfg,
                out_dir,
                discriminator=disc,
                device=dev,
                progress=progress,
                history=history,
                resume_from=resume_state if k == start_stage else None,
                on_step=on_step,
                dist_ctx=ctx,
            )
        final = out_dir / FINAL_CHECKPOINT
        if ctx.is_main:
            save_final(out_dir, model, history, cfg, checkpoint.dataset_geometry(train_ds))
        ctx.barrier()
    finally:
        ctx.close()
    model.eval()
    return TrainResult(model=model, history=history, out_dir=out_dir, checkpoint=final)
