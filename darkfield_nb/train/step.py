"""One optimizer step of a stage: generator and discriminator updates on one batch.

On a batch (x input, y target D; stage k the one being trained)::

    outs  = G(x, n_stages=k+1)            # stages < k run frozen: eval mode, no_grad
    mu, alpha, beta = outs[k]
    L_G   = w_l1 L1 + w_ggd NLL_GGD(y; mu, alpha, beta) + w_adv L_adv(D(x, mu), real)
    L_D   = (L_adv(D(x, y), real) + L_adv(D(x, mu.detach()), fake)) / 2

Both losses and both gradient norms are averaged over processes (so every process agrees) and
checked for NaN/Inf before any weight moves; a non-finite value raises
:class:`NonFiniteLossError`. Gradients are clipped by global norm, then the generator and the
discriminator step. Autocast runs in ``amp_dtype(cfg, device)`` (bfloat16 on CUDA by default);
losses are always computed in float32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from darkfield_nb.losses import adversarial_loss, ggd_loss, uncertainty_weighted_l1
from darkfield_nb.models import ProgressiveGenerator, StageOutput

from .config import StageSchedule, TrainConfig
from .distributed import DistContext

#: Per-step values, in the order they are reduced across processes and reported.
STEP_KEYS = ("loss", "l1", "ggd", "adv", "d_loss", "grad_norm", "d_grad_norm")


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm became NaN/Inf; the message names stage, epoch and step."""


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` on ``device`` (None: plain float32)."""
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp in ("auto", "bf16"):
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError(f"TrainConfig.amp='fp16' needs CUDA, got device {device}")
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``; a no-op context for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_to_device(
    batch: dict, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of a batch on ``device``, in channels-last layout when asked."""
    x = batch["input"].to(device, non_blocking=True)
    y = batch["target"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    return x, y


def _grad_norm(params: list[nn.Parameter], clip: float) -> torch.Tensor:
    """Global gradient L2 norm ``||g|| = sqrt(sum_i g_i^2)``, as a 0-d float32 tensor; when
    ``clip > 0`` every gradient is multiplied by ``min(1, clip / (||g|| + 1e-6))`` (as
    ``torch.nn.utils.clip_grad_norm_``).

    The norm is accumulated in float64: at the start of the GGD phase the NLL term
    ``(|y - mu| / alpha)^beta`` can give finite float32 gradients of 1e20 and more whose squares
    overflow float32, so ``clip_grad_norm_`` returned Inf and the step was refused although
    clipping would have made it a sane one. A gradient that is itself Inf or NaN still gives a
    non-finite norm (and :meth:`TrainStep.check_finite` stops the run)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norms = [torch.linalg.vector_norm(p.grad.detach().double()) for p in params]
    norm = torch.linalg.vector_norm(torch.stack(norms))
    if clip > 0 and torch.isfinite(norm):
        coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef.to(p.grad.dtype))
    return norm.float()


@dataclass
class TrainStep:
    """The networks, optimizers and settings of one stage's optimizer steps.

    Build it with :meth:`create`; after restoring a checkpoint into it, call :meth:`distribute`
    (DDP broadcasts rank 0's weights when it wraps a module, so wrapping comes after loading).
    ``g_run`` / ``d_run`` are the modules the forward passes go through: the networks
    themselves, or their DDP / ``torch.compile`` wrappers.
    """

    model: ProgressiveGenerator
    discriminator: nn.Module
    stage: int
    cfg: TrainConfig
    sched: StageSchedule
    device: torch.device
    ctx: DistContext
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    dtype: torch.dtype | None
    params: list[nn.Parameter]
    last_path: Path | None = None
    g_run: nn.Module | None = field(default=None, repr=False)
    d_run: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        model: ProgressiveGenerator,
        discriminator: nn.Module,
        stage: int,
        cfg: TrainConfig,
        device: torch.device,
        ctx: DistContext,
        last_path: Path | None = None,
    ) -> TrainStep:
        """Move both networks to ``device``, make stage ``stage`` the only trainable one and
        create the Adam optimizers (``sched.lr``, ``cfg.betas``) and, for fp16, a GradScaler."""
        sched = cfg.schedule(stage)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        model.to(device=device, memory_format=memory_format)
        params = model.trainable_stage(stage)
        discriminator.to(device=device, memory_format=memory_format)
        dtype = amp_dtype(cfg, device)
        return cls(
            model=model,
            discriminator=discriminator,
            stage=stage,
            cfg=cfg,
            sched=sched,
            device=device,
            ctx=ctx,
            opt_g=torch.optim.Adam(params, lr=sched.lr, betas=cfg.betas),
            opt_d=torch.optim.Adam(discriminator.parameters(), lr=sched.lr, betas=cfg.betas),
            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
            dtype=dtype,
            params=params,
            last_path=last_path,
            g_run=model,
            d_run=discriminator,
        )

    @property
    def use_adv(self) -> bool:
        """Whether the adversarial term (and so the discriminator update) is on."""
        return self.sched.adv_weight > 0

    def distribute(self) -> None:
        """Wrap the networks in DDP (when distributed) and ``torch.compile`` (``cfg.compile``)."""
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_run = DDP(self.model, device_ids=ids)
            if self.use_adv:
                self.d_run = DDP(self.discriminator, device_ids=ids)
        if self.cfg.compile:
            self.g_run = torch.compile(self.g_run)
            self.d_run = torch.compile(self.d_run)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of both optimizers."""
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

    def __call__(self, batch: dict, w_ggd: float, epoch: int, step: int) -> dict[str, float]:
        """One step on ``batch`` with GGD weight ``w_ggd``: losses and gradients, the NaN
        guard, then the optimizer updates. Returns the process-averaged values of
        ``STEP_KEYS``; 0-based ``epoch`` and ``step`` only name the place in an error."""
        values = self.losses_and_gradients(batch, w_ggd).tolist()
        vals = dict(zip(STEP_KEYS, values, strict=True))
        self.check_finite(vals, epoch, step)
        self.update()
        return vals

    def losses_and_gradients(self, batch: dict, w_ggd: float) -> torch.Tensor:
        """Forward both networks, backpropagate L_G and L_D, clip the gradients; the values of
        ``STEP_KEYS`` averaged over processes (no weight moves yet)."""
        cfg, sched, stage, device, dtype = self.cfg, self.sched, self.stage, self.device, self.dtype
        model, discriminator, scaler = self.model, self.discriminator, self.scaler
        use_adv = self.use_adv
        x, y = batch_to_device(batch, device, cfg.channels_last)
        with autocast(device, dtype):
            outs = self.g_run(x, n_stages=stage + 1)
        mu, alpha, beta = (t.float() for t in outs[stage])
        if cfg.attention_l1 and model.config.conditioning == "attention" and stage > 0:
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
            with autocast(device, dtype):
                fake_logits = discriminator(x, mu)
            discriminator.requires_grad_(True)
            adv_g = adversarial_loss(fake_logits.float(), True, kind=cfg.adv_kind)
            g_loss = g_loss + sched.adv_weight * adv_g
            with autocast(device, dtype):
                logits = self.d_run(torch.cat([x, x]), torch.cat([y, mu.detach()]))
            real, fake = logits.float().chunk(2)
            d_loss = 0.5 * (
                adversarial_loss(real, True, kind=cfg.adv_kind)
                + adversarial_loss(fake, False, kind=cfg.adv_kind)
            )
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        (scaler.scale(g_loss) if scaler else g_loss).backward()
        if use_adv:
            (scaler.scale(d_loss) if scaler else d_loss).backward()
        if scaler is not None:
            scaler.unscale_(self.opt_g)
            if use_adv:
                scaler.unscale_(self.opt_d)
        g_norm = _grad_norm(self.params, cfg.grad_clip).to(device)
        d_params = list(discriminator.parameters())
        d_norm = _grad_norm(d_params, cfg.grad_clip).to(device) if use_adv else zero
        values = torch.stack(
            [t.detach().float() for t in (g_loss, l1, ggd, adv_g, d_loss, g_norm, d_norm)]
        )
        return self.ctx.all_reduce_mean(values)

    def check_finite(self, vals: dict[str, float], epoch: int, step: int) -> None:
        """Raise :class:`NonFiniteLossError` when a loss (or, without a GradScaler, a gradient
        norm: the scaler skips steps with Inf gradients itself) is not finite."""
        keys = STEP_KEYS if self.scaler is None else STEP_KEYS[:5]
        bad = [k for k in keys if not math.isfinite(vals[k])]
        if not bad:
            return
        shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
        kept = (
            f"the last good checkpoint {self.last_path} is kept"
            if self.last_path is not None and self.last_path.exists()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"stage {self.stage}, epoch {epoch + 1}, step {step + 1}: non-finite "
            f"{', '.join(bad)} ({shown}); training stopped before updating any "
            f"weight, {kept}. Lower the learning rate or the GGD weight, or check "
            "the data for NaN/Inf."
        )

    def update(self) -> None:
        """Apply the gradients: generator, then discriminator (through the GradScaler)."""
        if self.scaler is not None:
            self.scaler.step(self.opt_g)
            if self.use_adv:
                self.scaler.step(self.opt_d)
            self.scaler.update()
        else:
            self.opt_g.step()
            if self.use_adv:
                self.opt_d.step()
