"""Training every stage in order: stage 0, freeze it, stage 1 guided by stage 0, and so on.

Files in ``out_dir`` (written by rank 0 only)::

    last.pt            the whole training state after the last completed epoch (for resume)
    stage{k}.pt        the generator after stage k finished
    model.pt           the final generator (all stages trained)
    history.csv/json   one record per epoch of every stage
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from darkfield_nb import checkpoint
from darkfield_nb.data import Augment, PairedDataset
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
    internally and crops its outputs back."""
    augment = Augment(seed=cfg.seed) if cfg.augment else None
    train = PairedDataset(
        data_root,
        split="train",
        augment=augment,
        pad_multiple=1,
        crop_size=cfg.crop_size,
        cache=cfg.cache_data,
    )
    val = PairedDataset(data_root, split="val", pad_multiple=1, cache=cfg.cache_data, check=False)
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


def _resume_state(
    out_dir: Path, config: TrainConfig | None, resume: bool
) -> tuple[dict | None, TrainConfig | None]:
    """(checkpoint to resume or None, config to use) for ``out_dir``; see train_progressive."""
    last = out_dir / LAST_CHECKPOINT
    if not last.exists():
        return None, config
    if not resume:
        raise FileExistsError(
            f"{out_dir}: already holds a training run ({LAST_CHECKPOINT}); pass resume=True "
            "(--resume) to continue it, or choose another output folder"
        )
    ckpt = checkpoint.load_checkpoint(last)
    stored = TrainConfig.from_dict(ckpt["train_config"])
    if config is None:
        return ckpt, stored
    diff = _config_mismatch(config, stored)
    if diff:
        raise ValueError(
            f"{last}: the given TrainConfig differs from the run being resumed:\n  "
            + "\n  ".join(diff)
            + "\n(pass config=None to resume with the stored settings)"
        )
    return ckpt, config


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
            unfinished stage (a fresh start when ``out_dir`` holds no ``last.pt``).
        device: "auto", "cpu", "cuda", ...; under torchrun "auto" means ``cuda:LOCAL_RANK``.
        progress: tqdm progress bars and one line per epoch (rank 0).
        on_step: see :func:`~darkfield_nb.train.train_stage`.

    Returns:
        TrainResult(model, history, out_dir, checkpoint).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        ValueError: ``config`` differs from the settings of the run being resumed.
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
                decision = ("ok", *_resume_state(out_dir, config, resume))
            except (FileExistsError, ValueError, checkpoint.CheckpointError) as exc:
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
