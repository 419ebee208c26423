"""Predictions of a model on a data split, stacked for the calibration functions, with an
optional .npz cache (MC dropout on a few dozen 256 px images takes a minute on 2 CPU cores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from darkfield_nb.hardware import pick_device
from darkfield_nb.uncertainty import MCMaps, mc_dropout_predict

from .metrics import predictive_alpha
from .regions import region_masks


@dataclass
class Predictions(MCMaps):
    """Stacks (N, H, W) of one split: the MC-dropout maps of :class:`~darkfield_nb.uncertainty.
    MCMaps` (``mu`` mean, ``aleatoric`` / ``epistemic`` / ``total`` standard deviations,
    ``beta`` mean GGD shape) and ``ids``, ``y`` target, ``x`` normalized input, ``mask`` label
    bits, ``alpha`` mean GGD scale over the passes."""

    ids: np.ndarray
    y: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray

    @property
    def alpha_total(self) -> np.ndarray:
        """GGD scale with the total sigma at the predicted shape (``predictive_alpha``)."""
        return predictive_alpha(self.total, self.beta)

    def regions(self) -> dict[str, np.ndarray]:
        """The five region maps (:func:`~darkfield_nb.calibration.regions.region_masks`)."""
        return region_masks(self.mask, self.x)

    def scaled(self, g) -> Predictions:
        """These predictions with each image's mean and every sigma / GGD-scale map times its
        factor ``g`` (N,) (the lung level's, ``level.LungLevel.factors``): a GGD variable
        scaled by g has scale g alpha and the same shape beta. Dtypes kept."""
        g = np.asarray(g, np.float64).reshape(-1, 1, 1)
        if len(g) != len(self.ids):
            raise ValueError(f"Predictions.scaled: {len(g)} factors for {len(self.ids)} images")
        names = ("mu", "aleatoric", "epistemic", "total", "alpha")
        return replace(
            self, **{k: (getattr(self, k) * g).astype(getattr(self, k).dtype) for k in names}
        )

    def subset(self, index) -> Predictions:
        return Predictions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{f.name: z[f.name] for f in fields(cls)})


@torch.no_grad()
def collect_predictions(
    model: torch.nn.Module,
    dataset,
    *,
    samples: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stage: int = -1,
    limit: int | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Predictions:
    """MC-dropout predictions (``samples`` passes, seed ``seed + i`` for image i) of every item
    of ``dataset`` (a ``PairedDataset`` with ``pad_multiple=1``), or its first ``limit``.
    ``cache``: a .npz path read if it exists, else written after predicting (the caller keys
    the name on model, split and samples). ``device``: resolved by
    :func:`~darkfield_nb.hardware.pick_device` ("auto": CUDA, then MPS, then the CPU)."""
    if cache is not None and Path(cache).exists():
        return Predictions.load(cache)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("collect_predictions: the data set (split) is empty")
    device = pick_device(device)
    model = model.to(device).eval()
    keys = ("y", "x", "mask", "mu", "aleatoric", "epistemic", "total", "alpha", "beta")
    out: dict[str, list] = {k: [] for k in keys}
    ids = []
    for i in tqdm(range(n), desc="predict", disable=not progress):
        item = dataset[i]
        x = item["input"][None].to(device)
        mc = mc_dropout_predict(model, x, samples=samples, seed=seed + i, stage=stage)
        ids.append(str(item["id"]))
        out["y"].append(item["target"][0].numpy())
        out["x"].append(item["input"][0].numpy())
        out["mask"].append(item["mask"][0].numpy().astype(np.int32))
        for k, v in mc.image_maps(0).items():
            out[k].append(v)
    preds = Predictions(ids=np.array(ids), **{k: np.stack(v) for k, v in out.items()})
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        preds.save(cache)
    return preds
