"""Named training recipes: the settings behind the shipped model, its baseline, and CI smoke runs.

``pretrained()`` is the recipe of ``data_samples/pretrained.pt`` (trained on CPU on 269
simulated patients at 256x256, ``darkfield-nb make-data --patients 269 --ood 24 --size 256
--seed 1``), ``single_stage_baseline()`` the one-stage model with about the same number of
parameters (base width 28: 5.94 M vs 5.83 M) trained for the same total number of steps,
``wide512()`` / ``wide512_single_stage()`` the GPU model of ``data_samples/gpu512`` and its
baseline, and ``smoke()`` a few steps at 64x64 that exercise every code path in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig
from darkfield_nb.train.config import UPGAN_SCHEDULE, StageSchedule, TrainConfig, upgan_stages

PRETRAINED_DATA = {"patients": 269, "ood": 24, "size": 256, "seed": 1}

#: The decoder of the first shipped model (v1, until this wave): transposed-convolution
#: upsampling and zero padding (the settings before ``GeneratorConfig`` had these fields). The
#: recipes now use the defaults, resize-convolution and replicate padding, which remove its
#: checkerboard and its bottom-edge sigma band.
V1_DECODER = {"upsample": "transpose", "padding_mode": "zeros"}

#: Run settings shared by the CPU recipes: 128 x 128 random crops, cached, a PatchGAN of width
#: 32 (the width-64 pix2pix discriminator cost twice the generator on a 2-core CPU).
_CPU_RUN = dict(
    discriminator=DiscriminatorConfig(width=32),
    crop_size=128,
    cache_data=True,
    seed=0,
)


def _mc_dropout_generator(
    n_stages: int,
    base_width: int,
    dropout_placement: str = "decoder",
    conditioning: str = "concat",
    norm: str = "batch",
) -> GeneratorConfig:
    """The generator of the recipes: ``n_stages`` U-Nets of ``base_width``, channel dropout
    p = 0.1 in the last stage only, at ``dropout_placement``, normalization ``norm``
    (``GeneratorConfig``).

    Batch normalization, not instance normalization: in eval mode it uses the statistics
    stored at training time, so a pixel's prediction depends only on its neighbourhood. With
    instance normalization every feature map is divided by its own per-image statistics and
    the prediction depends on how much air and arm surrounds the chest: v3 (instance norm)
    predicted 1.38 times the lung D for the same patients framed at 60 % rather than 100 % of
    the image, and 1.22 times after 64 px of edge padding (``bench/framing_invariance.py``)."""
    return GeneratorConfig(
        n_stages=n_stages,
        base_width=base_width,
        norm=norm,
        dropout=0.1,
        dropout_stages="last",
        dropout_placement=dropout_placement,
        conditioning=conditioning,
    )


def pretrained(base_width: int = 16, conditioning: str = "concat") -> TrainConfig:
    """Three stages, UP-GAN-like weights (L1 1 -> 0.5 -> 0.1, GGD 1e-4 -> 1e-3 -> 1e-2),
    12 / 10 / 10 epochs of 128x128 random crops, batch 8, and a PatchGAN of width 32
    (``_CPU_RUN``).

    Dropout (p = 0.1, channel) in the last stage: ``dropout_placement="head_reg"``, i.e. Monte
    Carlo dropout on the features entering the mean head only (last-layer MC dropout) plus
    train-time-only dropout at every decoder level (a regularizer that keeps the scale and shape
    heads as good as with decoder MC dropout). The 20 passes then cost about 1.2 deterministic
    passes instead of about 5 (``bench/RESULTS.md``, "MC dropout at the mean head"); MC dropout
    inside the decoder flagged no device better (``bench/epistemic_designs.py``)."""
    return TrainConfig(
        model=_mc_dropout_generator(3, base_width, "head_reg", conditioning),
        stages=upgan_stages(epochs=(12, 10, 10), warmup_epochs=(3, 2, 2), batch_size=8),
        **_CPU_RUN,
    )


def single_stage_baseline() -> TrainConfig:
    """One U-Net of base width 28 (about the parameters of three width-16 stages) trained for
    32 epochs, the three stages' total, with the first stage's loss weights."""
    return TrainConfig(
        model=_mc_dropout_generator(1, 28),
        stages=[
            StageSchedule(
                epochs=32, batch_size=8, lr=2e-4, l1_weight=1.0, ggd_weight=1e-3, warmup_epochs=3
            ),
        ],
        **_CPU_RUN,
    )


def smoke(n_stages: int = 3) -> TrainConfig:
    """A handful of steps at 64x64 with a narrow network: for CI and quick checks only."""
    return TrainConfig(
        model=GeneratorConfig(n_stages=n_stages, base_width=8, depth=3, dropout=0.1),
        stages=[StageSchedule(epochs=1, batch_size=2, warmup_epochs=0)],
        crop_size=64,
        max_steps_per_epoch=3,
        val_max_images=2,
        cache_data=True,
        seed=0,
    )


#: Run settings shared by the GPU recipes: whole images, cached, 6 loader workers, NHWC, a
#: PatchGAN of width 32 and validation on the first 48 images.
_WIDE512_RUN = dict(
    discriminator=DiscriminatorConfig(width=32),
    crop_size=None,
    cache_data=True,
    num_workers=6,
    channels_last=True,
    val_max_images=48,
    seed=0,
)


def wide512(
    epochs: tuple[int, int, int] = (12, 10, 10),
    base_width: int = 19,
    batch_size: int = 16,
    dropout_placement: str = "decoder",
    norm: str = "instance",
) -> TrainConfig:
    """The GPU recipe: three stages of base width 19 (9.14 M parameters, 18.3 MB in float16)
    trained on whole 512 x 512 images (no crops: the model sees the air around the body and
    the whole chest at once) with the UP-GAN loss schedule, the resize-convolution decoder
    with replicate padding, bf16 autocast and NHWC layout on CUDA. ``epochs`` per stage are
    set by the caller from a measured step time (``bench/gpu_train512.py``); warm-up (L1 only)
    is a quarter of each stage. ``dropout_placement``: the default ``"decoder"`` is what the
    shipped GPU model (``data_samples/gpu512``, session 16) was trained with;
    ``bench/gpu_train512.py`` trains the next one with ``"head_reg"``, the placement of
    :func:`pretrained` (Monte Carlo dropout at the last stage's mean head). ``norm``: likewise
    the shipped GPU model has ``"instance"``; the next one is trained with ``"batch"``, as
    :func:`pretrained` (:func:`_mc_dropout_generator` says why)."""
    warmup = tuple(max(1, e // 4) for e in epochs)
    return TrainConfig(
        model=_mc_dropout_generator(3, base_width, dropout_placement, norm=norm),
        stages=upgan_stages(epochs=epochs, warmup_epochs=warmup, batch_size=batch_size),
        **_WIDE512_RUN,
    )


def wide512_single_stage(
    epochs: int = 32, base_width: int = 33, batch_size: int = 16, dropout_placement: str = "decoder"
) -> TrainConfig:
    """The single-stage baseline of :func:`wide512`: one U-Net of base width 33 (9.18 M
    parameters against 9.14 M for three width-19 stages) with the first stage's loss weights;
    ``epochs`` is set by the caller (equal GPU time to the three-stage run in
    ``bench/gpu_train512.py``); ``dropout_placement`` as in :func:`wide512`."""
    lr, l1, ggd = UPGAN_SCHEDULE[0]
    return TrainConfig(
        model=_mc_dropout_generator(1, base_width, dropout_placement),
        stages=[
            StageSchedule(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                l1_weight=l1,
                ggd_weight=1e-3,
                warmup_epochs=max(1, epochs // 4),
            )
        ],
        **_WIDE512_RUN,
    )


def recipe_data(run_dir: str | os.PathLike, progress: bool = True) -> Path:
    """The data set the shipped model was trained on, ``run_dir/phantom256``: simulated on the
    first call (``PRETRAINED_DATA``, about a minute on 2 cores) and reused afterwards."""
    from darkfield_nb.physics import generate_dataset

    root = Path(run_dir) / "phantom256"
    if not (root / "manifest.csv").exists():
        d = PRETRAINED_DATA
        generate_dataset(
            root,
            d["patients"],
            d["size"],
            d["seed"],
            ood_patients=d["ood"],
            overwrite=root.exists(),
            progress=progress,
        )
    return root
