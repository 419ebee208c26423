"""Train the lung-level network on simulated paired folders.

The target of image i is its true mean lung dark-field,

    t_i = (1 / |L_i|) sum_{p in L_i} y_i(p)

(y_i the target D map, L_i the pixels whose mask carries the LUNG bit), and the input the
normalized attenuation image exactly as the generator sees it (``PairedDataset``'s ``input``).
Training (:func:`train_level_net`): MSE on the standardized target, Adam with a cosine
schedule, random left-right flips, a seeded holdout share of the images deciding early stopping
by its Spearman correlation (the figure issue 9 measures); the best holdout epoch is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from darkfield_nb.data import PairedDataset, require_splits
from darkfield_nb.hardware import pick_device, seed_everything
from darkfield_nb.labels import LUNG, has_label

from .epochs import holdout_split, train_early_stopped
from .net import LevelConfig, LevelNet, predict_standardized

#: an image needs this many lung pixels to give a training target
MIN_LUNG_PIXELS = 16


@dataclass
class LevelData:
    """Inputs ``x`` (N, H, W) float32 (normalized, as the generator sees them; (N, C, H, W) for
    extra channels, as a benchmark's lung-mask variant), targets ``t``
    (N,) float64 (mean true lung D), ``ids`` (N,) strings "folder-name/id", ``lung`` (N, H, W)
    bool the true lung masks (what the lung-mask network learns; None where not kept)."""

    x: np.ndarray
    t: np.ndarray
    ids: np.ndarray
    lung: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.t)


def level_data(
    roots: Sequence[str | os.PathLike],
    splits: Sequence[str] = ("train", "val"),
    *,
    progress: bool = True,
) -> LevelData:
    """The images of ``splits`` of every folder in ``roots`` (made by ``darkfield-nb
    make-data``) with their lung-D targets (module docstring). Images with fewer than
    ``MIN_LUNG_PIXELS`` lung pixels are left out. Raises ValueError naming the folder when a
    folder lacks the splits or masks, or its images differ in size from the first folder's."""
    xs, ts, ids, lungs = [], [], [], []
    shape = None
    for root in map(Path, roots):
        require_splits(root, tuple(splits), "the lung-level network")
        ds = PairedDataset(root, split=list(splits), pad_multiple=1)
        for i in tqdm(range(len(ds)), desc=f"read {root.name}", disable=not progress):
            item = ds[i]
            if item["mask"] is None or item["mask"].numel() == 0:
                raise ValueError(f"{root}: image {item['id']} has no label mask")
            x = item["input"][0].numpy().astype(np.float32)
            if shape is None:
                shape = x.shape
            elif x.shape != shape:
                raise ValueError(
                    f"{root}: image {item['id']} is {x.shape[0]} x {x.shape[1]} px, the "
                    f"training images before it {shape[0]} x {shape[1]}; make every folder "
                    "at one --size"
                )
            lung = has_label(item["mask"][0].numpy().astype(np.int64), LUNG)
            if lung.sum() < MIN_LUNG_PIXELS:
                continue
            xs.append(x)
            lungs.append(lung)
            ts.append(float(item["target"][0].numpy()[lung].astype(np.float64).mean()))
            ids.append(f"{root.name}/{item['id']}")
    if not ts:
        raise ValueError(f"level_data: no image with a lung in {[str(r) for r in roots]}")
    return LevelData(np.stack(xs), np.asarray(ts), np.asarray(ids), np.stack(lungs))


def train_level_net(
    data: LevelData,
    cfg: LevelConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[LevelNet, dict]:
    """Train :class:`LevelNet` on ``data`` (module docstring); deterministic for a seed on one
    device. Returns (the network at its best holdout epoch, in eval mode on the CPU, ``info``:
    ``target_mean``, ``target_sd`` (of the fitted images), ``best_holdout_spearman``, ``n_fit``,
    ``n_holdout``, ``history`` (one dict per epoch))."""
    cfg = cfg or LevelConfig()
    device = pick_device(device)
    seed_everything(cfg.seed)
    x = torch.from_numpy(data.x).float()
    if x.ndim == 3:  # (N, H, W): one channel
        x = x[:, None]
    t = data.t
    hold, fit = holdout_split(
        len(t), cfg.holdout_fraction, cfg.seed, min_holdout=3, where="train_level_net"
    )
    m, s = float(t[fit].mean()), float(t[fit].std())
    if not (s > 0 and np.ptp(t[fit]) > 0):  # the sd of equal floats can be a rounding residue
        raise ValueError("train_level_net: every training target is the same; nothing to learn")
    y = torch.from_numpy((t - m) / s).float()
    model = LevelNet(x.shape[1], cfg).to(device)

    def batch_loss(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        xb = x[idx]  # a copy: the flip below leaves x alone
        xb[flip] = xb[flip].flip(-1)
        return F.mse_loss(model(xb.to(device)), y[idx].to(device))

    def holdout_spearman() -> float:
        return float(spearmanr(t[hold], predict_standardized(model, x[hold], device))[0])

    best, history = train_early_stopped(
        model, fit, batch_loss, holdout_spearman, cfg,
        desc="lung level", score_name="holdout_spearman", progress=progress,
    )  # fmt: skip
    info = {
        "target_mean": m,
        "target_sd": s,
        "best_holdout_spearman": best,
        "n_fit": len(fit),
        "n_holdout": len(hold),
        "history": history,
    }
    return model.cpu().eval(), info


__all__ = ["MIN_LUNG_PIXELS", "LevelData", "level_data", "train_level_net"]
