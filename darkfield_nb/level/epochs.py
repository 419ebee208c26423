"""The training loop the level's networks share (:func:`.fit.train_level_net`,
:func:`.lung_mask.train_lung_mask_net`): Adam with a cosine schedule over ``max_epochs``,
batches in a seeded random order with a seeded left-right flip per image, and early stopping on
a holdout score (higher is better): stop after ``patience`` epochs without a better score, not
before ``min_epochs``, or once ``max_minutes`` have passed; the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


def holdout_split(
    n: int, fraction: float, seed: int, *, min_holdout: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(holdout, fit) indices of ``n`` images: a seeded permutation's first
    round(fraction * n) and the rest. ValueError naming ``where`` when the holdout has fewer
    than ``min_holdout`` images or fewer than 2 are left to fit."""
    n_hold = int(round(fraction * n))
    if n_hold < min_holdout or n - n_hold < 2:
        raise ValueError(
            f"{where}: {n} images leave too few for a holdout of {fraction:g} (need "
            f"{min_holdout} or more holdout and 2 or more to fit)"
        )
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_hold], order[n_hold:]


def train_early_stopped(
    model: torch.nn.Module,
    fit: np.ndarray,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    holdout_score: Callable[[], float],
    cfg,
    *,
    desc: str,
    score_name: str,
    progress: bool = True,
) -> tuple[float, list[dict]]:
    """Train ``model`` in place (module docstring) and load its best epoch's weights.

    ``fit``: indices of the training images; ``batch_loss(idx, flip)``: the loss of the images
    ``idx`` (LongTensor), those where ``flip`` (BoolTensor) is true mirrored left-right;
    ``holdout_score()``: the score after an epoch; ``cfg``: a config with ``lr``,
    ``weight_decay``, ``batch_size``, ``max_epochs``, ``min_epochs``, ``patience``,
    ``max_minutes`` and ``seed``. Batches of one image are skipped (BatchNorm needs two).
    Returns (the best score, one dict per epoch: ``epoch``, ``loss``, ``score_name``,
    ``minutes``)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.max_epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, history, stale, start = -np.inf, None, [], 0, time.time()
    bar = tqdm(total=cfg.max_epochs, desc=desc, unit="epoch", disable=not progress)
    fit = torch.as_tensor(np.asarray(fit), dtype=torch.long)
    for epoch in range(cfg.max_epochs):
        model.train()
        perm = fit[torch.randperm(len(fit), generator=gen)]
        losses = []
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            flip = torch.rand(len(idx), generator=gen) < 0.5
            loss = batch_loss(idx, flip)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        score = float(holdout_score())
        minutes = (time.time() - start) / 60
        history.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), score_name: score,
             "minutes": minutes}
        )  # fmt: skip
        bar.update(1)
        bar.set_postfix({"loss": f"{np.mean(losses):.3f}", score_name: f"{score:.4f}"})
        if score > best or best_state is None:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if (stale >= cfg.patience and epoch + 1 >= cfg.min_epochs) or minutes > cfg.max_minutes:
            break
    bar.close()
    model.load_state_dict(best_state)
    return best, history


__all__ = ["holdout_split", "train_early_stopped"]
