"""Training settings: a schedule per stage and the run-wide options, every field defaulted.

The default schedule follows the cascaded UP-GAN recipe (DESIGN section 5) as a starting point:

=====  ======  =========  ==========  ===========  ====
stage  epochs  L1 weight  GGD weight  warm-up      lr
=====  ======  =========  ==========  ===========  ====
0      50      1.0        1e-4        5 (L1 only)  2e-4
1      50      0.5        1e-3        5 (L1 only)  1e-4
2      150     0.1        1e-2        5 (L1 only)  1e-4
=====  ======  =========  ==========  ===========  ====

Within a stage the generator loss is, per step (``mu, alpha, beta`` the new stage's heads,
``y`` the target D, ``D`` the conditional PatchGAN on the input x)::

    L_G = w_l1 * L1 + w_ggd(phase) * NLL_GGD(y; mu, alpha, beta) + w_adv * L_adv(D(x, mu), real)

``L1`` is ``mean |y - mu|``, or for ``conditioning="attention"`` (with ``attention_l1``) the
mean of ``s * |y - mu|`` with s the previous stage's normalized sigma (mean ~1 per image).
``w_ggd(phase)`` is 0 during the first ``warmup_epochs`` epochs of the stage (the "L1 phase"),
then ``ggd_weight`` (the "L1 + GGD phase"). The learning rate falls linearly over the stage from
``lr`` to ``lr * final_lr_factor`` (DESIGN: 1e-4 towards 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from darkfield_nb.metrics import DARKFIELD_DATA_RANGE
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig

AMP_MODES = ("auto", "bf16", "fp16", "none")


@dataclass
class StageSchedule:
    """How one stage is trained.

    epochs: passes over the training split; batch_size: images per step (per process).
    lr: Adam learning rate at the start of the stage (generator and discriminator).
    final_lr_factor: the learning rate falls linearly to ``lr * final_lr_factor`` at the last epoch.
    l1_weight, ggd_weight, adv_weight: loss weights (see the module docstring).
    warmup_epochs: epochs at the start of the stage with the GGD term off (L1 + adversarial).
    """

    epochs: int = 50
    batch_size: int = 8
    lr: float = 2e-4
    final_lr_factor: float = 0.1
    l1_weight: float = 1.0
    ggd_weight: float = 1e-4
    adv_weight: float = 0.01
    warmup_epochs: int = 5

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.lr > 0, f"lr={self.lr} must be > 0"),
            (
                0 <= self.final_lr_factor <= 1,
                f"final_lr_factor={self.final_lr_factor} must be in [0, 1]",
            ),
            (self.l1_weight >= 0, f"l1_weight={self.l1_weight} must be >= 0"),
            (self.ggd_weight >= 0, f"ggd_weight={self.ggd_weight} must be >= 0"),
            (self.adv_weight >= 0, f"adv_weight={self.adv_weight} must be >= 0"),
            (self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs} must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"StageSchedule: {msg}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``: linear from ``lr`` to ``lr * final_lr_factor``."""
        if self.epochs == 1:
            return self.lr
        frac = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        return self.lr * (1.0 - (1.0 - self.final_lr_factor) * frac)

    def ggd_weight_at(self, epoch: int) -> float:
        """GGD weight of 0-based ``epoch``: 0 during the warm-up, ``ggd_weight`` after."""
        return 0.0 if epoch < self.warmup_epochs else self.ggd_weight

    def phase_at(self, epoch: int) -> str:
        return "l1" if epoch < self.warmup_epochs else "l1+ggd"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageSchedule:
        return cls(**_known(cls, d))


#: The cascaded UP-GAN loss schedule: (lr, l1_weight, ggd_weight) of stages 0, 1, 2 (the L1
#: weight falls and the GGD weight rises tenfold per stage).
UPGAN_SCHEDULE: tuple[tuple[float, float, float], ...] = (
    (2e-4, 1.0, 1e-4),
    (1e-4, 0.5, 1e-3),
    (1e-4, 0.1, 1e-2),
)


def _per_stage(value: int | Sequence[int], name: str) -> list[int]:
    values = [value] * len(UPGAN_SCHEDULE) if isinstance(value, int) else list(value)
    if len(values) != len(UPGAN_SCHEDULE):
        raise ValueError(
            f"upgan_stages: {name}={value!r} must be one number or {len(UPGAN_SCHEDULE)} of them"
        )
    return values


def upgan_stages(
    epochs: int | Sequence[int],
    warmup_epochs: int | Sequence[int] = 5,
    batch_size: int = 8,
) -> list[StageSchedule]:
    """Three StageSchedules with the learning rates and loss weights of ``UPGAN_SCHEDULE``.

    ``epochs`` and ``warmup_epochs`` are one number for every stage or one per stage; the
    other fields keep the StageSchedule defaults.
    """
    return [
        StageSchedule(
            epochs=e, batch_size=batch_size, lr=lr, l1_weight=l1, ggd_weight=g, warmup_epochs=w
        )
        for (lr, l1, g), e, w in zip(
            UPGAN_SCHEDULE,
            _per_stage(epochs, "epochs"),
            _per_stage(warmup_epochs, "warmup_epochs"),
            strict=True,
        )
    ]


def default_stages() -> list[StageSchedule]:
    """The UP-GAN-like schedule of the module docstring (three stages)."""
    return upgan_stages(epochs=(50, 50, 150))


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown field(s) {unknown}")
    return dict(d)


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data and the output folder.

    model, discriminator: network settings (``model.n_stages`` is the number of stages trained).
    stages: one StageSchedule per stage; stage k uses ``stages[min(k, len(stages) - 1)]``.
    betas: Adam betas (0.5, 0.999 as in pix2pix).
    grad_clip: clip the global gradient norm of each network to this (0 turns clipping off).
    adv_kind: "lsgan" or "bce"; ggd_kind: "exact" NLL or the UP-GAN "surrogate".
    attention_l1: with ``model.conditioning == "attention"``, weight the L1 of stage k >= 1 by
        stage k-1's normalized sigma (``ProgressiveGenerator.attention_map``).
    crop_size: random training crops of this size (None: whole images, which must then share
        one size); validation always uses whole images.
    augment: the default ``darkfield_nb.data.Augment`` on training images (seeded by ``seed``).
    cache_data: keep decoded images in memory.
    seed: seeds initialization, shuffling, augmentation and dropout (deterministic runs).
    num_workers: DataLoader worker processes.
    amp: "auto" (bf16 autocast on CUDA, float32 elsewhere), "bf16", "fp16" (with a gradient
        scaler) or "none".
    channels_last: NHWC memory layout (faster convolutions on recent GPUs).
    compile: ``torch.compile`` the generator and discriminator (off by default).
    max_steps_per_epoch: cap on optimizer steps per epoch (None: the whole split); for smoke runs.
    val_max_images: cap on validation images per epoch (None: the whole val split).
    data_range: ``data_range`` of validation PSNR/SSIM (``metrics.DARKFIELD_DATA_RANGE``, 1 D-unit).
    """

    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stages: list[StageSchedule] = field(default_factory=default_stages)
    betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: float = 1.0
    adv_kind: str = "lsgan"
    ggd_kind: str = "exact"
    attention_l1: bool = True
    crop_size: int | None = 256
    augment: bool = True
    cache_data: bool = False
    seed: int = 0
    num_workers: int = 0
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    max_steps_per_epoch: int | None = None
    val_max_images: int | None = None
    data_range: float = DARKFIELD_DATA_RANGE

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GeneratorConfig.from_dict(self.model)
        if isinstance(self.discriminator, dict):
            self.discriminator = DiscriminatorConfig.from_dict(self.discriminator)
        self.stages = [
            StageSchedule.from_dict(s) if isinstance(s, dict) else s for s in self.stages
        ]
        self.betas = tuple(float(b) for b in self.betas)
        checks = [
            (len(self.stages) >= 1, "stages must hold at least one StageSchedule"),
            (len(self.betas) == 2, f"betas={self.betas} must be two numbers"),
            (self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0"),
            (self.adv_kind in ("lsgan", "bce"), f"adv_kind={self.adv_kind!r}: lsgan or bce"),
            (
                self.ggd_kind in ("exact", "surrogate"),
                f"ggd_kind={self.ggd_kind!r}: exact or surrogate",
            ),
            (
                self.crop_size is None or self.crop_size >= 1,
                f"crop_size={self.crop_size} must be >= 1 or None",
            ),
            (self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0"),
            (self.amp in AMP_MODES, f"amp={self.amp!r} must be one of {AMP_MODES}"),
            (
                self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
                f"max_steps_per_epoch={self.max_steps_per_epoch} must be >= 1 or None",
            ),
            (self.data_range > 0, f"data_range={self.data_range} must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

    @property
    def n_stages(self) -> int:
        return self.model.n_stages

    def schedule(self, stage: int) -> StageSchedule:
        """The StageSchedule of 0-based ``stage`` (the last one repeats for extra stages)."""
        return self.stages[min(stage, len(self.stages) - 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**_known(cls, d))
