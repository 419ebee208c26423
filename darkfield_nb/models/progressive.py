"""The uncertainty-guided progressive generator: a cascade of U-Net stages.

Stage 0 sees the (normalized) attenuation image x. Stage k+1 sees x and stage k's output:

* ``conditioning="concat"`` (as in UP-GAN): input [x, mu_k, alpha_k, beta_k].
* ``conditioning="attention"``: input [x, mu_k]; stage k's aleatoric standard deviation
  sigma_k = alpha_k sqrt(Gamma(3/beta_k) / Gamma(1/beta_k)) is normalized per image,
  s = clamp(sigma_k / mean_HW(sigma_k), 0, attention_max), and gates every encoder level of
  stage k+1: ``f <- f * (1 + s_l) / 2`` with s_l = s average-pooled to that level (the gate has
  mean ~1, so it re-weights rather than rescales). :meth:`ProgressiveGenerator.attention_map`
  returns s so that training can also weight its loss toward uncertain regions.

Inputs of any H, W (odd too) are padded once to a multiple of ``2**depth`` (reflect padding,
centred, by ``darkfield_nb.data.transforms.pad_to_multiple``: repeated reflections where the
pad exceeds the image, replicate for a side of length 1) and every output is cropped back.

Freezing (:meth:`ProgressiveGenerator.freeze_stages`, :meth:`ProgressiveGenerator.trainable_stage`)
really freezes: the stage goes to eval mode (``model.train()`` keeps it there),
``requires_grad_(False)``, and its forward runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from ..data.transforms import pad_to_multiple, unpad
from ..ggd import ggd_std
from .config import GeneratorConfig
from .unet import StageOutput, UNetStage


class MCPrefix(NamedTuple):
    """What Monte Carlo dropout computes once per image: see :meth:`ProgressiveGenerator.mc_prefix`.

    xp: padded input; size: original (H, W); pads: (top, bottom, left, right), as returned by
    ``darkfield_nb.data.transforms.pad_to_multiple``;
    stage: index of the first stage with active dropout; feats: that stage's encoder features
    (empty when the stage drops encoder features: ``dropout_placement="encoder_decoder"``);
    prev_mu: the previous stage's mean (padded), which a residual stage adds to its output;
    inp, gate: that stage's input and attention gate, kept when its encoder is not deterministic
    (the encoder then runs once per Monte Carlo pass).
    """

    xp: torch.Tensor
    size: tuple[int, int]
    pads: tuple[int, int, int, int]
    stage: int
    feats: list[torch.Tensor]
    prev_mu: torch.Tensor | None = None
    inp: torch.Tensor | None = None
    gate: torch.Tensor | None = None


class ProgressiveGenerator(nn.Module):
    """Cascade of ``config.n_stages`` U-Net stages, each predicting (mu, alpha, beta) per pixel.

    ``ProgressiveGenerator()`` builds the default 3-stage model with dropout in the last stage.
    ``forward(x, n_stages=None)`` takes x (B, C, H, W) and returns a list of
    :class:`StageOutput`, one per stage run (all stages by default), each cropped to (H, W).
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else GeneratorConfig()
        drop_stages = cfg.resolved_dropout_stages()
        extra = 3 if cfg.conditioning == "concat" else 1
        self.stages = nn.ModuleList(
            UNetStage(
                cfg.in_channels if k == 0 else cfg.in_channels + extra,
                cfg,
                dropout=cfg.dropout if k in drop_stages else 0.0,
            )
            for k in range(cfg.n_stages)
        )
        self._frozen: set[int] = set()
        if cfg.residual:
            for stage in list(self.stages)[1:]:
                nn.init.zeros_(stage.head_mu.weight)
                if stage.head_mu.bias is not None:
                    nn.init.zeros_(stage.head_mu.bias)

    # ------------------------------------------------------------------ geometry
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"ProgressiveGenerator: input of shape {tuple(x.shape)}; expected "
                f"(B, {self.config.in_channels}, H, W)"
            )
        return pad_to_multiple(x, self.config.stride)

    @staticmethod
    def _crop(out: StageOutput, pads) -> StageOutput:
        return StageOutput(*(unpad(t, pads) for t in out))

    # ------------------------------------------------------------------ conditioning
    def attention_map(self, out: StageOutput) -> torch.Tensor:
        """Normalized aleatoric sigma s = clamp(sigma / mean_HW(sigma), 0, attention_max).

        Shape (B, 1, H, W), mean ~1 per image; large where the stage is uncertain.
        """
        sigma = ggd_std(out.alpha, out.beta)
        s = sigma / sigma.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return s.clamp(0.0, self.config.attention_max)

    def _stage_io(
        self, k: int, xp: torch.Tensor, prev: StageOutput | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input tensor and optional encoder gate of stage ``k`` (padded coordinates)."""
        if k == 0:
            return xp, None
        if self.config.conditioning == "concat":
            return torch.cat([xp, prev.mu, prev.alpha, prev.beta], dim=1), None
        gate = 0.5 * (1.0 + self.attention_map(prev))
        return torch.cat([xp, prev.mu], dim=1), gate

    def _grad_ctx(self, k: int):
        return torch.no_grad() if k in self._frozen else contextlib.nullcontext()

    def _residual(self, out: StageOutput, prev_mu: torch.Tensor | None) -> StageOutput:
        """mu_k = mu_{k-1} + delta_k for residual stages (config.residual), else unchanged."""
        if not self.config.residual or prev_mu is None:
            return out
        return StageOutput(prev_mu + out.mu, out.alpha, out.beta)

    def _run_stage(self, k: int, xp: torch.Tensor, prev: StageOutput | None) -> StageOutput:
        with self._grad_ctx(k):
            inp, gate = self._stage_io(k, xp, prev)
            return self._residual(self.stages[k](inp, gate), None if prev is None else prev.mu)

    # ------------------------------------------------------------------ forward
    def _n(self, n_stages: int | None) -> int:
        n = self.config.n_stages if n_stages is None else int(n_stages)
        if not 1 <= n <= self.config.n_stages:
            raise ValueError(f"n_stages={n_stages} must be in 1..{self.config.n_stages}")
        return n

    def forward(self, x: torch.Tensor, n_stages: int | None = None) -> list[StageOutput]:
        """Outputs of stages 0 .. n_stages-1 (all by default), each cropped to x's H, W."""
        n = self._n(n_stages)
        xp, pads = self._pad(x)
        outs, prev = [], None
        for k in range(n):
            prev = self._run_stage(k, xp, prev)
            outs.append(self._crop(prev, pads))
        return outs

    # ------------------------------------------------------------------ freezing
    @property
    def frozen_stages(self) -> tuple[int, ...]:
        return tuple(sorted(self._frozen))

    def _set_frozen(self, k: int, frozen: bool) -> None:
        stage = self.stages[k]
        stage.requires_grad_(not frozen)
        if frozen:
            self._frozen.add(k)
            stage.eval()
        else:
            self._frozen.discard(k)
            stage.train(self.training)

    def freeze_stages(self, k: int) -> None:
        """Freeze stages 0 .. k-1 (eval mode, no grad, no autograd graph); others untouched."""
        if not 0 <= k <= self.config.n_stages:
            raise ValueError(f"freeze_stages({k}): k must be in 0..{self.config.n_stages}")
        for j in range(k):
            self._set_frozen(j, True)

    def trainable_stage(self, k: int) -> list[nn.Parameter]:
        """Make stage ``k`` (0-based) the only trainable stage; return its parameters."""
        n = self.config.n_stages
        if not -n <= k < n:
            raise ValueError(f"trainable_stage({k}): k must be in 0..{n - 1}")
        k %= n
        for j in range(n):
            self._set_frozen(j, j != k)
        return list(self.stages[k].parameters())

    def unfreeze(self) -> None:
        """Unfreeze every stage (joint fine-tuning)."""
        for j in range(self.config.n_stages):
            self._set_frozen(j, False)

    def train(self, mode: bool = True) -> ProgressiveGenerator:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode."""
        super().train(mode)
        for k in self._frozen:
            self.stages[k].eval()
        return self

    # ------------------------------------------------------------------ MC dropout support
    def first_dropout_stage(self, upto: int = -1) -> int | None:
        """Index of the first stage <= ``upto`` with active dropout, or None."""
        upto %= self.config.n_stages
        for k in range(upto + 1):
            if self.stages[k].has_dropout:
                return k
        return None

    def mc_prefix(self, x: torch.Tensor, upto: int = -1) -> MCPrefix:
        """The deterministic part before the first dropout layer, computed once.

        Runs stages before the first dropout stage and that stage's encoder (only its input when
        the encoder itself drops). Needs a stage with dropout at or before ``upto`` (see
        :meth:`first_dropout_stage`).
        """
        k0 = self.first_dropout_stage(upto)
        if k0 is None:
            raise ValueError(f"mc_prefix: no stage up to {upto} has active dropout")
        xp, pads = self._pad(x)
        prev = None
        for k in range(k0):
            prev = self._run_stage(k, xp, prev)
        with self._grad_ctx(k0):
            inp, gate = self._stage_io(k0, xp, prev)
            if self.stages[k0].has_encoder_dropout:
                feats = []
            else:
                feats, inp, gate = self.stages[k0].encode(inp, gate), None, None
        prev_mu = None if prev is None else prev.mu
        return MCPrefix(xp, tuple(x.shape[-2:]), pads, k0, feats, prev_mu, inp, gate)

    def mc_suffix(self, prefix: MCPrefix, repeats: int, upto: int = -1) -> StageOutput:
        """Run the rest of the network on ``repeats`` copies of the prefix (stacked sample-major
        along the batch, like ``x.repeat(repeats, 1, 1, 1)``); returns stage ``upto``'s output
        of shape (repeats * B, 1, H, W), cropped."""
        upto %= self.config.n_stages
        xp = prefix.xp.repeat(repeats, 1, 1, 1)
        k0 = prefix.stage
        prev_mu = None if prefix.prev_mu is None else prefix.prev_mu.repeat(repeats, 1, 1, 1)
        with self._grad_ctx(k0):
            if prefix.inp is not None:
                gate = None if prefix.gate is None else prefix.gate.repeat(repeats, 1, 1, 1)
                feats = self.stages[k0].encode(prefix.inp.repeat(repeats, 1, 1, 1), gate)
            else:
                feats = [f.repeat(repeats, 1, 1, 1) for f in prefix.feats]
            out = self._residual(self.stages[k0].decode(feats), prev_mu)
        for k in range(k0 + 1, upto + 1):
            out = self._run_stage(k, xp, out)
        return self._crop(out, prefix.pads)
