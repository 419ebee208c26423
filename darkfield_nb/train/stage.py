"""Training one stage of the progressive generator, with every earlier stage frozen.

One optimizer step on a batch (x input, y target D; stage k the one being trained)::

    outs  = G(x, n_stages=k+1)            # stages < k run frozen: eval mode, no_grad
    mu, alpha, beta = outs[k]
    L_G   = w_l1 L1 + w_ggd NLL_GGD(y; mu, alpha, beta) + w_adv L_adv(D(x, mu), real)
    L_D   = (L_adv(D(x, y), real) + L_adv(D(x, mu.detach()), fake)) / 2

Both losses are checked for NaN/Inf (averaged over processes, so every process agrees) before
any weight moves; a non-finite value stops training with :class:`NonFiniteLossError`, and the
checkpoint of the last completed epoch stays on disk untouched. Gradients are clipped by
global norm, then the generator and the discriminator step. Autocast runs in bfloat16 on CUDA
(``TrainConfig.amp``); losses are always computed in float32.

Determinism: epoch e of stage k shuffles with a generator seeded by (seed, k, e), draws
augmentation from (seed, epoch, index) and reseeds torch's global RNG (dropout) from
(seed, k, e, rank) at the start of the epoch. So an epoch depends only on the weights and
optimizer states at its start, which the per-epoch checkpoint holds: a resumed run repeats
exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from darkfield_nb import checkpoint
from darkfield_nb.data import unpad
from darkfield_nb.hardware import pick_device
from darkfield_nb.losses import (
    adversarial_loss,
    ggd_loss,
    ggd_nll,
    uncertainty_weighted_l1,
)
from darkfield_nb.metrics import mse, psnr, ssim
from darkfield_nb.models import ProgressiveGenerator, StageOutput, build_discriminator

from .config import TrainConfig
from .distributed import DistContext
from .history import write_history

LAST_CHECKPOINT = "last.pt"
#: Tag mixed into the seed of a stage's discriminator initialization.
DISC_SEED_TAG = 7919

#: Per-step values, in the order they are reduced across processes and reported.
STEP_KEYS = ("loss", "l1", "ggd", "adv", "d_loss", "grad_norm", "d_grad_norm")


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm became NaN/Inf; the message names stage, epoch and step."""


def seed_for(*parts: int) -> int:
    """A 31-bit seed mixed from non-negative integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def stage_checkpoint_name(stage: int) -> str:
    """File name of the checkpoint written when 0-based ``stage`` finishes."""
    return f"stage{stage}.pt"


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` on ``device`` (None: plain float32)."""
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp in ("auto", "bf16"):
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError(f"TrainConfig.amp='fp16' needs CUDA, got device {device}")
    return torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def _to_device(batch: dict, device: torch.device, channels_last: bool):
    x = batch["input"].to(device, non_blocking=True)
    y = batch["target"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    return x, y


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
            x, y = _to_device(batch, device, cfg.channels_last)
            with _autocast(device, dtype):
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


def _grad_norm(params: list[nn.Parameter], clip: float) -> torch.Tensor:
    """Global gradient L2 norm (clipped to ``clip`` when > 0), as a 0-d tensor."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)


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
    on_step: Callable[[int, int, int, dict[str, float]], None] | None = None,
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

    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model.to(device=device, memory_format=memory_format)
    params = model.trainable_stage(stage)
    if discriminator is None:
        torch.manual_seed(seed_for(cfg.seed, stage, DISC_SEED_TAG))
        discriminator = build_discriminator(cfg.discriminator)
    discriminator.to(device=device, memory_format=memory_format)
    opt_g = torch.optim.Adam(params, lr=sched.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=sched.lr, betas=cfg.betas)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_epoch = 0
    if resume_from is not None:
        if int(resume_from["stage"]) != stage:
            raise ValueError(
                f"train_stage: resume_from holds stage {resume_from['stage']}, not {stage}"
            )
        state = resume_from["generator"]
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
        if resume_from.get("discriminator") is not None:
            discriminator.load_state_dict(resume_from["discriminator"])
        if resume_from.get("optimizer") is not None:
            opt_g.load_state_dict(resume_from["optimizer"])
        if resume_from.get("disc_optimizer") is not None:
            opt_d.load_state_dict(resume_from["disc_optimizer"])
        if scaler is not None and resume_from.get("scaler") is not None:
            scaler.load_state_dict(resume_from["scaler"])
        if resume_from.get("rng") is not None:
            checkpoint.set_rng_state(resume_from["rng"])
        start_epoch = int(resume_from["epoch"])
        history = list(resume_from.get("history") or [])

    use_adv = sched.adv_weight > 0
    g_run: nn.Module = model
    d_run: nn.Module = discriminator
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        g_run = DDP(model, device_ids=ids)
        if use_adv:
            d_run = DDP(discriminator, device_ids=ids)
    if cfg.compile:
        g_run = torch.compile(g_run)
        d_run = torch.compile(d_run)
    attention = cfg.attention_l1 and model.config.conditioning == "attention" and stage > 0
    last_path = out_dir / LAST_CHECKPOINT
    d_params = list(discriminator.parameters())

    def step_fn(batch: dict, w_ggd: float) -> torch.Tensor:
        x, y = _to_device(batch, device, cfg.channels_last)
        with _autocast(device, dtype):
            outs = g_run(x, n_stages=stage + 1)
        mu, alpha, beta = (t.float() for t in outs[stage])
        if attention:
            weight = model.attention_map(StageOutput(*(t.float() for t in outs[stage - 1])))
            l1 = uncertainty_weighted_l1(y, mu, weight)
        else:
            l1 = (y - mu).abs().mean()
        # the GGD term is always in the graph (weight 0 in the warm-up) so that DDP sees a
        # gradient, possibly zero, for the alpha and beta heads at every step
        ggd = ggd_loss(y, mu, alpha, beta, kind=cfg.ggd_kind)
        g_loss = sched.l1_weight * l1 + w_ggd * ggd
        zero = torch.zeros((), device=device)
        adv_g, d_loss = zero, zero
        if use_adv:
            discriminator.requires_grad_(False)  # the generator step must not touch D
            with _autocast(device, dtype):
                fake_logits = discriminator(x, mu)
            discriminator.requires_grad_(True)
            adv_g = adversarial_loss(fake_logits.float(), True, kind=cfg.adv_kind)
            g_loss = g_loss + sched.adv_weight * adv_g
            with _autocast(device, dtype):
                logits = d_run(torch.cat([x, x]), torch.cat([y, mu.detach()]))
            real, fake = logits.float().chunk(2)
            d_loss = 0.5 * (
                adversarial_loss(real, True, kind=cfg.adv_kind)
                + adversarial_loss(fake, False, kind=cfg.adv_kind)
            )
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        (scaler.scale(g_loss) if scaler else g_loss).backward()
        if use_adv:
            (scaler.scale(d_loss) if scaler else d_loss).backward()
        if scaler is not None:
            scaler.unscale_(opt_g)
            if use_adv:
                scaler.unscale_(opt_d)
        g_norm = _grad_norm(params, cfg.grad_clip).to(device)
        d_norm = _grad_norm(d_params, cfg.grad_clip).to(device) if use_adv else zero
        values = torch.stack(
            [t.detach().float() for t in (g_loss, l1, ggd, adv_g, d_loss, g_norm, d_norm)]
        )
        return ctx.all_reduce_mean(values)

    for epoch in range(start_epoch, sched.epochs):
        torch.manual_seed(seed_for(cfg.seed, stage, epoch, ctx.rank))
        lr = sched.lr_at(epoch)
        w_ggd = sched.ggd_weight_at(epoch)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        model.train()
        discriminator.train()
        loader = make_loader(train_data, sched.batch_size, cfg, stage, epoch, ctx, device)
        n_steps = len(loader)
        if cfg.max_steps_per_epoch is not None:
            n_steps = min(n_steps, cfg.max_steps_per_epoch)
        sums = torch.zeros(len(STEP_KEYS), dtype=torch.float64)
        n_images = 0
        t0 = time.perf_counter()
        desc = f"stage {stage} epoch {epoch + 1}/{sched.epochs}"
        with tqdm(total=n_steps, desc=desc, disable=not (progress and ctx.is_main)) as bar:
            for step, batch in enumerate(loader):
                if step >= n_steps:
                    break
                values = step_fn(batch, w_ggd).tolist()
                bad_keys = STEP_KEYS if scaler is None else STEP_KEYS[:5]
                vals = dict(zip(STEP_KEYS, values, strict=True))
                bad = [k for k in bad_keys if not math.isfinite(vals[k])]
                if bad:
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
                    kept = (
                        f"the last good checkpoint {last_path} is kept"
                        if last_path.exists()
                        else "no checkpoint was written yet"
                    )
                    raise NonFiniteLossError(
                        f"stage {stage}, epoch {epoch + 1}, step {step + 1}: non-finite "
                        f"{', '.join(bad)} ({shown}); training stopped before updating any "
                        f"weight, {kept}. Lower the learning rate or the GGD weight, or check "
                        "the data for NaN/Inf."
                    )
                if scaler is not None:
                    scaler.step(opt_g)
                    if use_adv:
                        scaler.step(opt_d)
                    scaler.update()
                else:
                    opt_g.step()
                    if use_adv:
                        opt_d.step()
                sums += torch.tensor(values, dtype=torch.float64)
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
                    on_step(stage, epoch, step, vals)
        seconds = time.perf_counter() - t0
        if ctx.enabled:
            # DDP syncs buffers (BatchNorm statistics, spectral-norm vectors) from rank 0 at
            # the start of each forward, so after the last step they differ: sync them now
            for buf in [*model.buffers(), *discriminator.buffers()]:
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
        if ctx.is_main:
            record.update(validate(model, stage, val_data, cfg, device))
        if ctx.enabled:  # every process keeps the same history (rank 0's validation figures)
            box = [record]
            dist.broadcast_object_list(box, src=0)
            record = box[0]
        history.append(record)
        done = epoch + 1 == sched.epochs
        if ctx.is_main:
            checkpoint.save(
                last_path,
                model,
                stage=stage,
                epoch=epoch + 1,
                stages_trained=stage + 1 if done else stage,
                optimizer=opt_g,
                discriminator=discriminator,
                disc_optimizer=opt_d,
                scaler=scaler,
                history=history,
                train_config=cfg,
            )
            write_history(out_dir, history)
            if progress:
                tqdm.write(
                    f"stage {stage} epoch {epoch + 1}/{sched.epochs}: "
                    f"train loss {record['train_loss']:.4f} l1 {record['train_l1']:.4f} "
                    f"| val psnr {record['val_psnr']:.2f} ssim {record['val_ssim']:.3f} "
                    f"nll {record['val_nll']:.3f}"
                )
    if ctx.is_main:
        checkpoint.save(
            out_dir / stage_checkpoint_name(stage),
            model,
            stage=stage,
            epoch=sched.epochs,
            stages_trained=stage + 1,
            history=history,
            train_config=cfg,
            rng=False,
        )
    ctx.barrier()
    return history
