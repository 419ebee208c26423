"""The pieces of one ablation run (notebook 11): data, training settings, figures of merit.

Factors and how they map onto the training API (``darkfield_nb.train``):

=================  ==================================================================
n_stages           ``GeneratorConfig.n_stages`` (1 is the single-stage baseline)
conditioning       "concat" or "attention" (``GeneratorConfig.conditioning``); "none"
                   is not offered by the generator and is refused with a clear error
loss               "exact" GGD NLL or the UP-GAN "surrogate" (``TrainConfig.ggd_kind``);
                   "gaussian" / "laplace": the exact NLL with beta confined to
                   2 +/- BETA_HALF_WIDTH / 1 +/- BETA_HALF_WIDTH (``beta_min``/``beta_max``:
                   the generator needs beta_min < beta_max, so beta is fixed to 1e-3)
dropout            rate on decoder feature maps; dropout_stages "last" / "all"
mc_samples         Monte Carlo dropout passes T at evaluation
epochs, image_size epochs per stage; simulated image size (training on whole images)
=================  ==================================================================
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig
from darkfield_nb.train import StageSchedule, TrainConfig

LOSSES = ("exact", "surrogate", "gaussian", "laplace")
FIXED_BETA = {"gaussian": 2.0, "laplace": 1.0}
BETA_HALF_WIDTH = 1e-3
CONDITIONINGS = ("concat", "attention")
# Sub-folders of a run folder. Not "train": notebooks 03-05 keep their model in run_dir/train,
# and the notebook harness gives every notebook the same run_dir.
TRAIN_DIR = "ablation_train"
DATA_DIR = "ablation_data"


def train_config(
    *,
    n_stages: int = 3,
    base_width: int = 8,
    depth: int = 3,
    conditioning: str = "concat",
    loss: str = "exact",
    dropout: float = 0.1,
    dropout_stages: str = "last",
    epochs: int = 2,
    batch_size: int = 4,
    lr: float = 1e-3,
    steps_per_epoch: int = 0,
    seed: int = 0,
) -> TrainConfig:
    """A CPU-sized TrainConfig for one ablation point (table in the module docstring).

    Every stage gets the same schedule (``epochs``, learning rate ``lr`` falling linearly to a
    tenth, L1 weight 1, GGD weight 1e-2 after one warm-up epoch when epochs > 1), so that
    factors, not schedules, differ between runs. The default lr is higher than the shipped
    recipe's 2e-4 because ablation runs take few steps: on 40 simulated patients at 64 px
    (7 steps per epoch), one width-8 stage reached validation MSE 0.0042 after 6 epochs at
    lr 1e-3, while 3 epochs at 2e-4 left a 3-stage model at 0.14 (predicting 0 gives 0.023).
    ``steps_per_epoch`` 0 means the whole training split each epoch.
    """
    if conditioning not in CONDITIONINGS:
        raise ValueError(
            f"ablation: conditioning={conditioning!r} is not supported by the generator "
            f"(darkfield_nb.models offers {CONDITIONINGS})"
        )
    if loss not in LOSSES:
        raise ValueError(f"ablation: loss={loss!r} must be one of {LOSSES}")
    beta = {}
    if loss in FIXED_BETA:
        b = FIXED_BETA[loss]
        beta = {"beta_min": b - BETA_HALF_WIDTH, "beta_max": b + BETA_HALF_WIDTH}
    model = GeneratorConfig(
        n_stages=int(n_stages),
        base_width=int(base_width),
        depth=int(depth),
        conditioning=conditioning,
        dropout=float(dropout),
        dropout_stages=dropout_stages,
        **beta,
    )
    schedule = StageSchedule(
        epochs=int(epochs),
        batch_size=int(batch_size),
        lr=float(lr),
        l1_weight=1.0,
        ggd_weight=1e-2,
        warmup_epochs=1 if epochs > 1 else 0,
    )
    return TrainConfig(
        model=model,
        discriminator=DiscriminatorConfig(width=16),
        stages=[schedule],
        ggd_kind="surrogate" if loss == "surrogate" else "exact",
        crop_size=None,
        cache_data=True,
        max_steps_per_epoch=int(steps_per_epoch) or None,
        seed=int(seed),
    )


def cached_dataset(
    cache_dir: str | os.PathLike, n_patients: int, size: int, seed: int, ood_patients: int
) -> Path:
    """Simulated paired data ``cache_dir/phantom-{n}-{ood}-{size}px-seed{seed}``, made once.

    Runs of one grid (also in parallel processes) share it: a file lock serializes the
    simulation, which writes into a temporary folder renamed into place when complete.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / f"phantom-{n_patients}-{ood_patients}-{size}px-seed{seed}"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "manifest.csv").exists():
            from darkfield_nb.physics import generate_dataset

            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
            try:
                generate_dataset(
                    tmp / "data",
                    int(n_patients),
                    int(size),
                    int(seed),
                    ood_patients=int(ood_patients),
                    progress=False,
                    workers=1,
                )
                if root.exists():
                    shutil.rmtree(root)
                os.replace(tmp / "data", root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def figures_of_merit(evaluation: dict, flagging: list[dict], n_parameters: int) -> dict:
    """The flat summary an ablation compares: final-stage MSE/PSNR/SSIM, per-stage lists,
    the uncertainty figures of ``darkfield_nb.evaluation.evaluate`` and the mean device AUROC
    of each sigma over the device images (``darkfield_nb.ood.device_flagging``; None when the
    data hold no device image)."""
    out: dict = {"n_parameters": int(n_parameters), "n_test_images": evaluation["n_images"]}
    for m in ("mse", "psnr", "ssim"):
        out[m] = float(evaluation[m][-1])
        out[f"{m}_per_stage"] = [float(v) for v in evaluation[m]]
    for k, v in evaluation["uncertainty"].items():
        out[k] = v
    out["n_device_images"] = len(flagging)
    for kind in ("epistemic", "aleatoric", "total"):
        out[f"auroc_{kind}"] = _mean([r[f"auroc_{kind}"] for r in flagging])
    return out
