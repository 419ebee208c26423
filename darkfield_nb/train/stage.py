"""Training one stage of the progressive generator, with every earlier stage frozen.

:func:`train_stage` runs the epochs of a stage; each optimizer step is a
:class:`~darkfield_nb.train.step.TrainStep` call (the losses, the NaN/Inf guard and the
updates are documented there). A non-finite value stops training with
:class:`~darkfield_nb.train.step.NonFiniteLossError`, and the checkpoint of the last
completed epoch stays on disk untouched.

Determinism: epoch e of stage k shuffles with a generator seeded by (seed, k, e), draws
augmentation from (seed, epoch, index) and reseeds torch's global RNG (dropout) from
(seed, k, e, rank) at the start of the epoch. So an epoch depends only on the weights and
optimizer states at its start, which the per-epoch checkpoint holds: a resumed run repeats
exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from darkfield_nb import checkpoint
from darkfield_nb.data import unpad
from darkfield_nb.hardware import pick_device
from darkfield_nb.losses import ggd_nll
from darkfield_nb.metrics import mse, psnr, ssim
from darkfield_nb.models import ProgressiveGenerator, build_discriminator

from .config import TrainConfig
from .distributed import DistContext
from .history import write_history
from .step import STEP_KEYS, TrainStep, amp_dtype, autocast, batch_to_device

LAST_CHECKPOINT = "last.pt"
#: Tag mixed into the seed of a stage's discriminator initialization.
DISC_SEED_TAG = 7919

#: Called after every optimizer step as ``on_step(stage, epoch, step, values)``.
OnStep = Callable[[int, int, int, dict[str, float]], None]


def seed_for(*parts: int) -> int:
    """A 31-bit seed mixed from non-negative integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def stage_checkpoint_name(stage: int) -> str:
    """File name of the checkpoint written when 0-based ``stage`` finishes."""
    return f"stage{stage}.pt"


def make_discriminator(cfg: TrainConfig, stage: int) -> nn.Module:
    """A fresh conditional PatchGAN for ``stage`` (``cfg.discriminator``), initialized from
    the seed (cfg.seed, stage, DISC_SEED_TAG). Reseeds torch's global RNG."""
    torch.manual_seed(seed_for(cfg.seed, stage, DISC_SEED_TAG))
    return build_discriminator(cfg.discriminator)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    cfg: TrainConfig,
    stage: int,
    epoch: int,
    ctx: DistContext,
    device: torch.device,
) -> DataLoader:
    """The training DataLoader of one epoch: shuffled from (seed, stage, epoch), sharded
    across processes by a DistributedSampler when distributed."""
    n = len(dataset)
    drop_last = n >= batch_size * ctx.world_size
    if ctx.enabled:
        sampler = DistributedSampler(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed_for(cfg.seed, stage),
            drop_last=drop_last,
        )
        sampler.set_epoch(epoch)
    else:
        gen = torch.Generator()
        gen.manual_seed(seed_for(cfg.seed, stage, epoch))
        sampler = RandomSampler(dataset, generator=gen)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(stage * 100_000 + epoch)  # augmentation draws differ per stage and epoch
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


@torch.no_grad()
def validate(
    model: ProgressiveGenerator,
    stage: int,
    val_data: Dataset | None,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Validation figures of stage ``stage``'s mean mu against the target, per image averaged:

    ``val_mse``, ``val_psnr``, ``val_ssim`` (``data_range = cfg.data_range``), ``val_l1`` and
    ``val_nll`` (the exact GGD NLL of the target under (mu, alpha, beta)); images are unpadded
    first. NaN everywhere when there is no validation data.
    """
    keys = ("val_mse", "val_psnr", "val_ssim", "val_l1", "val_nll")
    if val_data is None or len(val_data) == 0:
        return {k: math.nan for k in keys}
    device = pick_device(device)
    was_training = model.training
    model.eval()
    dtype = amp_dtype(cfg, device)
    sums = dict.fromkeys(keys, 0.0)
    n = 0
    loader = DataLoader(val_data, batch_size=1, shuffle=False, num_workers=cfg.num_workers)
    try:
        for i, batch in enumerate(loader):
            if cfg.val_max_images is not None and i >= cfg.val_max_images:
                break
            x, y = batch_to_device(batch, device, cfg.channels_last)
            with autocast(device, dtype):
                out = model(x, n_stages=stage + 1)[stage]
            mu, alpha, beta = (unpad(t.float(), batch["pad"]) for t in out)
            y = unpad(y, batch["pad"])
            t2, p2 = y[0, 0], mu[0, 0]
            sums["val_mse"] += float(mse(t2, p2))
            sums["val_psnr"] += float(psnr(t2, p2, data_range=cfg.data_range))
            sums["val_ssim"] += float(ssim(t2, p2, data_range=cfg.data_range))
            sums["val_l1"] += float((y - mu).abs().mean())
            sums["val_nll"] += float(ggd_nll(y, mu, alpha, beta))
            n += 1
    finally:
        model.train(was_training)
    return {k: v / n for k, v in sums.items()}


def _resolve_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(device)


def train_stage(
    model: ProgressiveGenerator,
    stage: int,
    train_data: Dataset,
    val_data: Dataset | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    discriminator: nn.Module | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    history: list[dict] | None = None,
    resume_from: dict | None = None,
    on_step: OnStep | None = None,
    dist_ctx: DistContext | None = None,
) -> list[dict]:
    """Train 0-based ``stage`` of ``model`` with stages ``< stage`` frozen; return the history.

    Each epoch appends one record to the history (``stage``, 1-based ``epoch``, ``phase``,
    ``lr``, ``ggd_weight``, mean training losses ``train_*``, validation figures ``val_*``,
    ``seconds``, ``images_per_s``), then rank 0 writes ``out_dir/last.pt`` (the whole training
    state; atomic) and ``history.csv`` / ``history.json``. When the stage is done it also writes
    ``out_dir/stage{stage}.pt``.

    Args:
        model: the ProgressiveGenerator (its stage ``stage`` becomes the only trainable one).
        train_data, val_data: datasets of items with ``input``, ``target`` and ``pad``
            (:class:`darkfield_nb.data.PairedDataset`); ``val_data`` may be None.
        cfg: TrainConfig; ``cfg.schedule(stage)`` gives epochs, batch size and loss weights.
        discriminator: the conditional PatchGAN for this stage (default: a fresh one from
            ``cfg.discriminator``, initialized from (seed, stage)).
        history: records of earlier stages, kept in front of this stage's records.
        resume_from: a raw checkpoint of this stage (``checkpoint.load_checkpoint``): restores
            generator, discriminator, optimizers and history and continues after its epoch.
        on_step: called after every optimizer step as ``on_step(stage, epoch, step, values)``
            (0-based epoch and step; values keyed by ``STEP_KEYS``), e.g. to stop early.
        dist_ctx: the process group context (:func:`~darkfield_nb.train.init_distributed`);
            None for a single process.

    Raises:
        NonFiniteLossError: naming stage, epoch and step, when a loss or gradient norm is not
            finite; no weight is updated by that step and ``last.pt`` keeps the last good epoch.
    """
    ctx = dist_ctx or DistContext()
    device = _resolve_device(device)
    sched = cfg.schedule(stage)
    out_dir = Path(out_dir)
    history = list(history or [])
    n_stages = model.config.n_stages
    if not 0 <= stage < n_stages:
        raise ValueError(f"train_stage: stage={stage} must be in 0..{n_stages - 1}")
    if len(train_data) == 0:
        raise ValueError("train_stage: the training data set is empty")

    step = TrainStep.create(
        model,
        discriminator if discriminator is not None else make_discriminator(cfg, stage),
        stage,
        cfg,
        device,
        ctx,
        last_path=out_dir / LAST_CHECKPOINT,
    )
    start_epoch = 0
    if resume_from is not None:
        if int(resume_from["stage"]) != stage:
            raise ValueError(
                f"train_stage: resume_from holds stage {resume_from['stage']}, not {stage}"
            )
        try:
            start_epoch = checkpoint.restore_training_state(
                resume_from,
                model,
                discriminator=step.discriminator,
                optimizer=step.opt_g,
                disc_optimizer=step.opt_d,
                scaler=step.scaler,
            )
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise checkpoint.CheckpointError(
                f"{out_dir / LAST_CHECKPOINT}: cannot restore the training state "
                f"({' '.join(str(exc).split())[:300]})"
            ) from exc
        history = list(resume_from.get("history") or [])
    step.distribute()

    for epoch in range(start_epoch, sched.epochs):
        record = _run_epoch(step, epoch, train_data, progress, on_step)
        if ctx.is_main:
            record.update(validate(model, stage, val_data, cfg, device))
        if ctx.enabled:  # every process keeps the same history (rank 0's validation figures)
            box = [record]
            dist.broadcast_object_list(box, src=0)
            record = box[0]
        history.append(record)
        if ctx.is_main:
            _save_epoch(step, epoch, out_dir, history, progress)
    if ctx.is_main:
        checkpoint.save_trained(
            out_dir / stage_checkpoint_name(stage),
            model,
            stage=stage,
            epoch=sched.epochs,
            history=history,
            train_config=cfg,
            geometry=checkpoint.dataset_geometry(train_data),
        )
    ctx.barrier()
    return history


def _run_epoch(
    step: TrainStep,
    epoch: int,
    train_data: Dataset,
    progress: bool,
    on_step: OnStep | None,
) -> dict:
    """Train one epoch: seed dropout, set the learning rate, run the steps; return the
    epoch's history record without validation figures."""
    cfg, sched, stage, ctx = step.cfg, step.sched, step.stage, step.ctx
    torch.manual_seed(seed_for(cfg.seed, stage, epoch, ctx.rank))
    lr = sched.lr_at(epoch)
    w_ggd = sched.ggd_weight_at(epoch)
    step.set_lr(lr)
    step.model.train()
    step.discriminator.train()
    loader = make_loader(train_data, sched.batch_size, cfg, stage, epoch, ctx, step.device)
    n_steps = len(loader)
    if cfg.max_steps_per_epoch is not None:
        n_steps = min(n_steps, cfg.max_steps_per_epoch)
    sums = torch.zeros(len(STEP_KEYS), dtype=torch.float64)
    n_images = 0
    t0 = time.perf_counter()
    desc = f"stage {stage} epoch {epoch + 1}/{sched.epochs}"
    with tqdm(total=n_steps, desc=desc, disable=not (progress and ctx.is_main)) as bar:
        for i, batch in enumerate(loader):
            if i >= n_steps:
                break
            vals = step(batch, w_ggd, epoch, i)
            sums += torch.tensor(list(vals.values()), dtype=torch.float64)
            n_images += batch["input"].shape[0] * ctx.world_size
            bar.set_postfix(
                loss=f"{vals['loss']:.4f}",
                l1=f"{vals['l1']:.4f}",
                nll=f"{vals['ggd']:.3f}",
                d=f"{vals['d_loss']:.3f}",
                refresh=False,
            )
            bar.update(1)
            if on_step is not None:
                on_step(stage, epoch, i, vals)
    seconds = time.perf_counter() - t0
    if ctx.enabled:
        # DDP syncs buffers (BatchNorm statistics, spectral-norm vectors) from rank 0 at
        # the start of each forward, so after the last step they differ: sync them now
        for buf in [*step.model.buffers(), *step.discriminator.buffers()]:
            dist.broadcast(buf, src=0)
    means = (sums / max(n_steps, 1)).tolist()
    record: dict = {
        "stage": stage,
        "epoch": epoch + 1,
        "phase": sched.phase_at(epoch),
        "lr": lr,
        "ggd_weight": w_ggd,
        "steps": n_steps,
    }
    record.update({f"train_{k}": v for k, v in zip(STEP_KEYS, means, strict=True)})
    record["seconds"] = seconds
    record["images_per_s"] = n_images / seconds if seconds > 0 else math.nan
    return record


def _save_epoch(
    step: TrainStep, epoch: int, out_dir: Path, history: list[dict], progress: bool
) -> None:
    """Rank 0 after an epoch: ``last.pt`` (the whole training state), the history files and,
    with ``progress``, one summary line."""
    sched, stage = step.sched, step.stage
    checkpoint.save_training_state(
        out_dir / LAST_CHECKPOINT,
        step.model,
        stage=stage,
        epoch=epoch + 1,
        stage_done=epoch + 1 == sched.epochs,
        optimizer=step.opt_g,
        discriminator=step.discriminator,
        disc_optimizer=step.opt_d,
        scaler=step.scaler,
        history=history,
        train_config=step.cfg,
    )
    write_history(out_dir, history)
    if progress:
        record = history[-1]
        tqdm.write(
            f"stage {stage} epoch {epoch + 1}/{sched.epochs}: "
            f"train loss {record['train_loss']:.4f} l1 {record['train_l1']:.4f} "
            f"| val psnr {record['val_psnr']:.2f} ssim {record['val_ssim']:.3f} "
            f"nll {record['val_nll']:.3f}"
        )
