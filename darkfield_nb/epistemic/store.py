"""The out-of-distribution detector stored with a model: fit it after training on the training
split (densities) and the validation split (references, threshold), write it into a checkpoint
under the key ``"ood"``, read it back.

The entry survives ``torch.load(weights_only=True)``: the detector's NumPy arrays (means and
precisions of every level) become float64 tensors, everything else is plain numbers, strings,
lists and dicts::

    version      5 when the detector carries a foreign-body term (``foreign_body``, below), else
                 4 when it carries a kNN lung contrast (``contrast``), else 3 (so that an older
                 reader still reads every entry it can score, and refuses one it would score
                 wrongly); 2: written before the combined per-image score, 1: before
                 pixel_levels / patch / conversion; all read and scored as they were written
    detector     OODDetector.state(), arrays as tensors: levels, level (0.05: 5 % of
                 in-distribution images flagged), stage, pixel_levels, patch, conversion
                 {u_ref, sigma_ref, power, quantile, offset, gain}, d_ref, sigma_ref,
                 threshold {threshold, level, n_calibration, score}, image_score {kind,
                 names, mean, std, local {mu_threshold, erosion, q_hi, q_lo, min_pixels}},
                 val_scores, pixel_ref, image_ref, parts [{pixel: {mean, precision,
                 shrinkage} or None, image: {...}} per level]; version 4 only: contrast
                 {density "knn", dtype, knn {kind, size, dim, k, projection, seed, memory
                 (size x p, float16 by default: 10,000 x 144 is 2.9 MB, float32 5.8 MB),
                 matrix (None unless projection "all"), index (int64), radius,
                 reference}} (absent: the Gaussian contrast of the pixel map); version 5 only:
                 foreign_body {method, config, state (the segmenter's weights, float16),
                 conversion {m_ref, sigma_ref, quantile, gain, power}, top_k, region,
                 mu_threshold, min_pixels}
                 (``foreign_body_term.ForeignBodyTerm``; the score's names then include
                 "foreign_body")
    fitted_on    {data, n_train, n_val, stage, densities_from (only when the densities were
                 kept from an earlier entry: its fitted_on)}
    score        one sentence: what the per-image score is and what the flag promises

The threshold promises its 5 % only for images exchangeable with the validation images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint
from darkfield_nb.checkpoint_entry import open_source, write_checkpoint_entry
from darkfield_nb.data import PairedDataset, require_splits
from darkfield_nb.hardware import pick_device

from .detector import OODDetector
from .foreign_body_term import ForeignBodyTerm
from .fpi import load_fpi

KEY = "ood"
VERSION = 5  # the newest entry this code reads
FOREIGN_BODY_VERSION = 5  # written for an entry with a foreign-body term
KNN_VERSION = 4  # written for an entry with a kNN contrast (and no foreign-body term)
GAUSSIAN_VERSION = 3  # written for an entry without either
SCORE_TEXT = (
    "per-image score: the larger of two z-scores against the validation images, of the log "
    "pooled distance (mean over encoder levels of the Mahalanobis distance of the pooled "
    "features, each divided by its training median) and of the log contrast Q99/Q50 of the "
    "pixel distance map inside the predicted lung field; flag: score above the 95th percentile "
    "of the validation images' leave-one-out scores (5 % of in-distribution images flagged)"
)
KNN_SCORE_TEXT = SCORE_TEXT.replace(
    "of the pixel distance map", "of the nearest-neighbour (coreset kNN) patch distance map"
)


def _to_tensors(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
    if isinstance(value, dict):
        return {str(k): _to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_tensors(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_arrays(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, dict):
        return {k: _to_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_arrays(v) for v in value]
    return value


def batches(dataset: PairedDataset, batch_size: int = 8, limit: int | None = None) -> Iterator:
    """Normalized inputs of ``dataset`` stacked in batches of equal-sized images, (B, C, H, W)."""
    batch: list[torch.Tensor] = []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        x = dataset[i]["input"]
        if batch and (len(batch) == batch_size or x.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(x)
    if batch:
        yield torch.stack(batch)


def fit_ood_detector(
    model: torch.nn.Module,
    data_root: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 8,
    max_train: int | None = None,
    densities_from: dict | None = None,
    **detector_kw,
) -> dict:
    """Fit :class:`OODDetector` on ``model`` (densities on the ``train`` split, at most
    ``max_train`` images; the sigma conversion, the per-image score and the threshold on
    ``val``) and return the checkpoint entry described in the module docstring.
    ``detector_kw``: the options of :class:`OODDetector` (``levels``, ``level``, ``stage``,
    ``pixel_levels``, ``patch``, ``power``, ``quantile``, ``offset``, ``gain``, ``local``,
    ``contrast_density`` ("gaussian" or "knn"), ``contrast_knn``, ``contrast_dtype``,
    ``max_pixels``), its defaults where not given.

    ``densities_from``: an earlier entry of the same model whose train-split densities are
    kept (its ``levels``, ``pixel_levels``, ``patch`` and ``stage`` win over the options);
    only the validation step (:meth:`OODDetector.calibrate`) is redone, with the options'
    ``level`` and conversion and score settings, which saves one forward pass per training
    image. The kept densities include the entry's contrast density (kNN or Gaussian); asking
    for ``contrast_density="knn"`` on an entry without one is a ValueError (the kNN needs the
    training split)."""
    splits = ("val",) if densities_from is not None else ("train", "val")
    require_splits(data_root, splits, "the out-of-distribution detector")
    device = pick_device(device)
    model = model.to(device).eval()
    ds = {
        s: PairedDataset(data_root, split=s, pad_multiple=1, check=False, load_masks=False)
        for s in splits
    }
    det = OODDetector(model, **detector_kw)
    val = (x.to(device) for x in batches(ds["val"], batch_size))
    if densities_from is not None:
        kept = detector_from_entry(model, densities_from)
        if det.contrast_density == "knn" and kept.contrast_knn is None:
            raise ValueError(
                "fit_ood_detector: contrast_density='knn' with kept densities, but the kept "
                "entry has no kNN contrast density; refit on the training split instead"
            )
        det = kept.with_calibration_options(det)
        det.calibrate(val)
        n_train = int(densities_from["fitted_on"]["n_train"])
    else:
        train = [x.to(device) for x in batches(ds["train"], batch_size, max_train)]
        det.fit(train, val)
        n_train = sum(int(x.shape[0]) for x in train)
    fitted_on = {
        "data": str(data_root),
        "n_train": n_train,
        "n_val": len(ds["val"]),
        "stage": det.stage,
    }
    if densities_from is not None:
        fitted_on["densities_from"] = dict(densities_from["fitted_on"])
    knn = det.contrast_knn is not None
    fb = det.foreign_body is not None
    version = FOREIGN_BODY_VERSION if fb else KNN_VERSION if knn else GAUSSIAN_VERSION
    text = KNN_SCORE_TEXT if knn else SCORE_TEXT
    if fb:
        text = text.replace("the larger of two z-scores", "the largest of three z-scores")
        text = text.replace(
            " inside the predicted lung field;",
            " inside the predicted lung field, and of the log mean of the "
            f"{det.foreign_body.top_k} largest values of the foreign-body segmenter's map inside "
            f"the {det.foreign_body.region};",
        )
    return {
        "version": version,
        "detector": _to_tensors(det.state()),
        "fitted_on": fitted_on,
        "score": text,
    }


def _check_entry(entry, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: 'ood' entry is a {type(entry).__name__}, not a dict")
    missing = [k for k in ("version", "detector", "fitted_on") if k not in entry]
    if missing:
        raise ValueError(f"{where}: 'ood' entry lacks {missing}")
    if int(entry["version"]) > VERSION:
        raise ValueError(f"{where}: 'ood' entry version {entry['version']} is newer than this")
    need = ("levels", "threshold", "parts", "d_ref", "sigma_ref", "pixel_ref", "image_ref")
    lacking = [k for k in need if k not in entry["detector"]]
    if lacking:
        raise ValueError(f"{where}: 'ood' detector lacks {lacking}")
    return entry


def ood_of(ckpt: dict) -> dict | None:
    """The detector entry stored in a raw checkpoint dict (:func:`checkpoint.load_checkpoint`),
    or None when it has none. Raises ValueError when the entry is malformed."""
    entry = ckpt.get(KEY)
    return None if entry is None else _check_entry(entry, "checkpoint")


def detector_from_entry(model: torch.nn.Module, entry: dict) -> OODDetector:
    """The fitted :class:`OODDetector` of ``entry`` for ``model`` (the generator it was fitted
    on)."""
    _check_entry(entry, "ood entry")
    return OODDetector.from_state(model, _to_arrays(entry["detector"]))


def detector_from_checkpoint(
    ckpt: dict, model: torch.nn.Module | None = None, device: str | torch.device = "cpu"
) -> OODDetector | None:
    """The detector stored in ``ckpt`` (None without one), on ``model`` or the checkpoint's
    generator rebuilt on ``device``."""
    entry = ood_of(ckpt)
    if entry is None:
        return None
    if model is None:
        model = checkpoint.generator_from_checkpoint(ckpt, pick_device(device))
    return detector_from_entry(model.eval(), entry)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def write_ood_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, entry: dict, *, overwrite: bool = False
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with ``entry`` under ``"ood"``, atomically; the file
    is reloaded with ``weights_only=True``, its generator rebuilt and the entry compared before
    it takes the name ``dst`` (:func:`darkfield_nb.checkpoint_entry.write_checkpoint_entry`)."""
    _check_entry(entry, str(dst))
    return write_checkpoint_entry(
        src, dst, KEY, entry, read_back=ood_of, same=_same, overwrite=overwrite
    )


def attach_ood_detector(
    src: str | os.PathLike,
    data_root: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    keep_densities: bool = False,
    **fit_kw,
) -> tuple[Path, dict]:
    """Fit on ``data_root`` (:func:`fit_ood_detector`; the stage is the last one trained unless
    given) and write ``dst``. Returns (dst, entry). Checks the output before fitting.
    ``keep_densities``: keep the train-split densities of the detector ``src`` carries and
    refit only its validation step (ValueError naming ``src`` when it carries none).
    ``contrast_density="knn"`` (with ``contrast_knn``, ``contrast_dtype``) passes through to
    :class:`OODDetector`: the per-image score's lung contrast from a kNN patch density.
    ``foreign_body`` (a :class:`~.foreign_body_term.ForeignBodyTerm`, or the path of a
    ``train_fpi`` checkpoint of a foreign-body segmenter, taken with the term's defaults): the
    segmenter's map joins the epistemic sigma and the per-image score (entry version 5)."""
    src, dst = Path(src), Path(dst)
    fb = fit_kw.get("foreign_body")
    if isinstance(fb, (str, os.PathLike)):  # a train_fpi checkpoint of the segmenter
        fit_kw["foreign_body"] = ForeignBodyTerm(load_fpi(fb))
    ckpt, model, last = open_source(src, dst, overwrite, pick_device(device))
    fit_kw.setdefault("stage", last)
    if keep_densities:
        old = ood_of(ckpt)
        if old is None:
            raise ValueError(f"{src}: keep_densities=True, but it carries no 'ood' detector")
        fit_kw["densities_from"] = old
    entry = fit_ood_detector(model, data_root, device=device, **fit_kw)
    return write_ood_checkpoint(src, dst, entry, overwrite=overwrite), entry
