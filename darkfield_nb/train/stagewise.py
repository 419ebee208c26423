"""One stage at a time, as the stage notebooks run it: load the result if it exists, else train.

The notebooks ``03_train_stage1`` .. ``05_train_stage3`` each call :func:`train_or_load_stage`
for their stage: stage k starts from ``stage{k-1}.pt`` written by the notebook before it (its
weights are loaded and frozen) and writes ``stage{k}.pt``; after the last stage the complete
model is also saved as ``model.pt``. Re-running a notebook loads its checkpoint in seconds
instead of training again (``retrain=True`` forces training).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from darkfield_nb import checkpoint
from darkfield_nb.models import ProgressiveGenerator, build_generator
from darkfield_nb.train.config import TrainConfig
from darkfield_nb.train.progressive import make_datasets, save_final
from darkfield_nb.train.stage import stage_checkpoint_name, train_stage


def train_or_load_stage(
    stage: int,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    *,
    retrain: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[ProgressiveGenerator, list[dict]]:
    """Return (model, history) with 0-based stages ``0..stage`` trained.

    ``out_dir/stage{stage}.pt`` is loaded when it exists (unless ``retrain``). Otherwise stage
    ``stage`` is trained on ``data_root`` with ``cfg`` on top of ``out_dir/stage{stage-1}.pt``
    (for stage 0, a fresh model built from ``cfg.model``). For stage > 0 the settings stored in
    the previous checkpoint are used, so the stages of one run always agree.
    """
    out_dir = Path(out_dir)
    done = out_dir / stage_checkpoint_name(stage)
    if done.exists() and not retrain:
        ckpt, model = checkpoint.load_with_generator(done)
        return model, list(ckpt["history"])
    if stage == 0:
        torch.manual_seed(cfg.seed)
        model, history = build_generator(cfg.model), []
        run_cfg = cfg
    else:
        previous = out_dir / stage_checkpoint_name(stage - 1)
        if not previous.exists():
            raise FileNotFoundError(
                f"{previous}: stage {stage} builds on stage {stage - 1}, whose checkpoint is "
                f"missing; run the notebook (or train_or_load_stage) for stage {stage - 1} first"
            )
        ckpt, model = checkpoint.load_with_generator(previous)
        history = list(ckpt["history"])
        run_cfg = TrainConfig.from_dict(ckpt["train_config"])
    train_ds, val_ds = make_datasets(data_root, run_cfg)
    history = train_stage(
        model,
        stage,
        train_ds,
        val_ds,
        run_cfg,
        out_dir,
        device=device,
        progress=progress,
        history=history,
    )
    if stage == model.config.n_stages - 1:
        save_final(out_dir, model, history, run_cfg)
    return model.eval(), history
