"""Out-of-distribution analysis: does the uncertainty light up where the input is unusual?

The question for a device (pacemaker, ECG cable, clip) is a pixel-level detection problem: score
every pixel by an uncertainty map and ask how well the scores separate device pixels from the
rest of the body. The figure of merit is the area under the ROC curve,

    AUROC = P(score(device pixel) > score(other pixel)) + 1/2 P(tie)
          = U / (n_pos n_neg),

with U the Mann-Whitney statistic of the two groups of scores (ranks averaged over ties). 0.5 is
chance, 1.0 perfect separation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from tqdm.auto import tqdm

from darkfield_nb.hardware import pick_device
from darkfield_nb.labels import DEVICE_BITS, LUNG
from darkfield_nb.uncertainty import mc_dropout_predict


def pixel_auroc(scores, positive, negative=None) -> float:
    """AUROC of ``scores`` for ``positive`` pixels against ``negative`` ones (default: the rest).

    ``scores``, ``positive`` and ``negative`` are arrays of one shape (masks boolean). U comes
    from ``scipy.stats.mannwhitneyu`` (ranks averaged over ties). Raises ValueError when either
    group is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    neg = ~pos if negative is None else (np.asarray(negative, dtype=bool) & ~pos)
    if s.shape != pos.shape or s.shape != neg.shape:
        raise ValueError(f"pixel_auroc: shapes differ: scores {s.shape}, masks {pos.shape}")
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"pixel_auroc: {n_pos} positive and {n_neg} negative pixels")
    # only U is used; the asymptotic method skips scipy's exact p-value (slow for big groups)
    u = mannwhitneyu(s[pos], s[neg], method="asymptotic").statistic
    return float(u / (n_pos * n_neg))


@torch.no_grad()
def device_flagging(
    model: torch.nn.Module,
    dataset,
    *,
    samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Per image with a device in its mask: AUROC of epistemic, aleatoric and total sigma for
    device pixels against lung pixels without device (where the model is usually confident).

    ``dataset``: a ``PairedDataset`` (``pad_multiple=1``) whose masks carry the device bits.
    Returns one dict per image: ``id``, ``case``, ``auroc_epistemic``, ``auroc_aleatoric``,
    ``auroc_total``, and the mean sigmas inside and outside the device.
    ``device``: "auto" | "cpu" | "cuda" | a ``torch.device`` (``hardware.pick_device``).
    """
    rows = []
    device = pick_device(device)
    model = model.to(device).eval()
    for i in tqdm(range(len(dataset)), desc="device flagging", disable=not progress):
        item = dataset[i]
        mask = item["mask"][0].numpy()
        dev = (mask & DEVICE_BITS) > 0
        lung = ((mask & LUNG) > 0) & ~dev
        if dev.sum() == 0 or lung.sum() == 0:
            continue
        mc = mc_dropout_predict(model, item["input"][None].to(device), samples=samples, seed=seed)
        row = {"id": item["id"], "case": dataset.rows[i].get("case", "")}
        for name in ("epistemic", "aleatoric", "total"):
            m = getattr(mc, name)[0, 0].float().cpu().numpy()
            row[f"auroc_{name}"] = pixel_auroc(m, dev, lung)
            row[f"{name}_device"] = float(m[dev].mean())
            row[f"{name}_lung"] = float(m[lung].mean())
        rows.append(row)
    return rows
