"""Out-of-distribution analysis: does the uncertainty light up where the input is unusual?

The question for a device (pacemaker, ECG cable, clip) is a pixel-level detection problem: score
every pixel by an uncertainty map and ask how well the scores separate device pixels from the
rest of the body. The figure of merit is the area under the ROC curve,

    AUROC = P(score(device pixel) > score(other pixel)) + 1/2 P(tie)
          = U / (n_pos n_neg),

with U the Mann-Whitney statistic of the two groups of scores (ranks averaged over ties). 0.5 is
chance, 1.0 perfect separation. Two references for the negative pixels: lung pixels without a
device (where the model is usually confident), and every body pixel without a device
(:func:`body_mask`).

Per image, the score is the default detector's (:class:`~darkfield_nb.epistemic.OODDetector`,
the Mahalanobis density of the last stage's encoder features, chosen in ``bench/RESULTS.md``
and ``bench/ood_targets.py``): the larger of two validation z-scores, of the log pooled
distance ``mean_l d_l(pool(x)) / med_l`` over levels 0-4 (a global shift: another scanner) and
of the log contrast ``Q_0.99(u) / Q_0.5(u)`` of the pixel map inside the predicted lung field
(a local anomaly: a device; :mod:`darkfield_nb.epistemic.combined`), flagged above the 95th
percentile of the validation images (:class:`OODThreshold`), so 5 % of in-distribution images
are flagged up to the validation split's sampling error. A detector with a foreign-body term
(the shipped one since session 24, :mod:`darkfield_nb.epistemic.foreign_body_term`) adds a third
z-score, of the log mean of the 50 largest values of its segmenter's map inside the thorax. A
detector stored before that score (entry version 2) keeps scoring by the pooled distance alone.
:func:`image_auroc` says how well the score separates out-of-distribution images from
in-distribution ones.

Maps of :func:`device_table`, each a per-pixel score:

=================== =========================================================================
``epistemic``       MC-dropout epistemic sigma (zero for a model without dropout)
``total``           MC-dropout total sigma, sqrt(aleatoric^2 + epistemic^2)
``density``         the detector's normalized feature distance ``u(x)`` (by default of the 3 x 3
                    neighbourhoods of the full-resolution level-0 features)
``density_total``   sqrt(aleatoric^2 + sigma_epi^2), sigma_epi the detector's epistemic sigma
                    ``sigma_ref gain max(u / u_ref - offset, 0)^power``
                    (:class:`~darkfield_nb.epistemic.DistanceSigma`), with a foreign-body
                    term also its sigma of m in quadrature (:class:`~darkfield_nb.epistemic.
                    conversion.MapSigma`)
``foreign_body``    the foreign-body segmenter's map ``m(x)`` in [0, 1]
                    (:mod:`darkfield_nb.epistemic.foreign_body`; only for a detector with one)
``combined``        sqrt(MC epistemic^2 + sigma_epi^2): the epistemic map ``predict`` writes
                    (``--epistemic auto``), before the recalibration's factor on the MC part
``combined_total``  sqrt(aleatoric^2 + MC epistemic^2 + sigma_epi^2): its total map, likewise
=================== =========================================================================
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.stats import mannwhitneyu
from tqdm.auto import tqdm

from darkfield_nb.data import normalize_input
from darkfield_nb.epistemic import (
    OODDetector,
    OODPrediction,
    OODThreshold,
    image_auroc,
    rank_vs_median,
)
from darkfield_nb.hardware import pick_device
from darkfield_nb.io import IMAGE_SUFFIXES, read_image
from darkfield_nb.labels import DEVICE_BITS, LUNG
from darkfield_nb.uncertainty import mc_dropout_predict

__all__ = [
    "MAPS",
    "REFERENCES",
    "OODDetector",
    "OODPrediction",
    "OODThreshold",
    "body_mask",
    "default_real_dir",
    "device_flagging",
    "device_table",
    "image_auroc",
    "image_scores",
    "load_real",
    "evaluate_ood",
    "ood_summary",
    "score_radiograph",
    "pixel_auroc",
    "rank_vs_median",
    "summarize_table",
    "time_costs",
]

MAPS = (
    "epistemic",
    "total",
    "density",
    "density_total",
    "foreign_body",
    "combined",
    "combined_total",
)
REFERENCES = ("lung", "body")
BODY_THRESHOLD = 0.05


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


def body_mask(x, mask, threshold: float = BODY_THRESHOLD) -> np.ndarray:
    """Body pixels of a simulated image: ``fill_holes((x > threshold) | (mask != 0))``.

    The masks carry no body bit. ``x`` is the normalized input (air outside the patient
    normalizes to about 0, tissue to 0.1-1), ``mask`` the label mask; every labelled pixel is
    body, and holes (dark lung inside a bright rim) are filled (``scipy.ndimage``)."""
    x = np.asarray(x, dtype=np.float64).squeeze()
    m = np.asarray(mask).squeeze()
    if x.shape != m.shape:
        raise ValueError(f"body_mask: input {x.shape} and mask {m.shape} differ in shape")
    return ndimage.binary_fill_holes((x > threshold) | (m != 0))


def default_real_dir() -> Path:
    """``../shared/real_cxr`` of the repository this package lives in (from the package's
    location, not the working directory)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "real_cxr"


def load_real(
    real_dir: str | os.PathLike | None = None, size: int | None = 256
) -> list[tuple[str, torch.Tensor]]:
    """Every image of ``real_dir`` (default :func:`default_real_dir`), sorted by name, as
    (name, normalized input (1, 1, H, W)); resized (area) to ``size`` square unless None.
    Raises FileNotFoundError naming the folder when it is missing."""
    folder = Path(real_dir) if real_dir is not None else default_real_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of real radiographs")
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        img = torch.from_numpy(read_image(path).astype(np.float32))[None, None]
        if size is not None:
            img = F.interpolate(img, size=(size, size), mode="area")
        out.append((path.name, normalize_input(img)))
    return out


def image_scores(detector: OODDetector, inputs, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-image scores of ``inputs`` (an iterable of (B, C, H, W) or (C, H, W) tensors),
    :meth:`OODDetector.score`."""
    out = []
    for x in inputs:
        x = x[None] if x.ndim == 3 else x
        out.append(detector.score(x.to(device)))
    return np.concatenate(out) if out else np.zeros(0)


def _maps(model, detector, x, samples: int, seed: int) -> dict[str, np.ndarray]:
    det = detector.predict(x)
    mc = mc_dropout_predict(model, x, samples=samples, seed=seed, stage=detector.stage)

    def a(t):
        return t[0, 0].detach().double().cpu().numpy()

    maps = {
        "epistemic": a(mc.epistemic),
        "total": a(mc.total),
        "density": a(det.distance),
        "density_total": a(det.total),
        "combined": np.hypot(a(mc.epistemic), a(det.epistemic)),
        "combined_total": np.sqrt(a(mc.total) ** 2 + a(det.epistemic) ** 2),
        "_score": float(det.score[0]),
        "_flag": bool(det.flag[0]),
    }
    if det.foreign_body is not None:
        maps["foreign_body"] = a(det.foreign_body)
    return maps


@torch.no_grad()
def device_table(
    model: torch.nn.Module,
    dataset,
    detector: OODDetector,
    *,
    samples: int = 20,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[dict]:
    """Rows per image with a device x map (:data:`MAPS`) x reference (lung, body): ``id``,
    ``case``, ``map``, ``reference``, ``auroc`` (device pixels against the reference pixels
    without device), ``n_device``, and the image's ``score`` and ``flag``. ``dataset``: a
    ``PairedDataset`` (``pad_multiple=1``) with masks. MC dropout uses ``samples`` passes."""
    device = pick_device(device)
    model = model.to(device).eval()
    rows = []
    for i in tqdm(range(len(dataset)), desc="device table", disable=not progress):
        item = dataset[i]
        mask = item["mask"][0].numpy()
        dev = (mask & DEVICE_BITS) > 0
        refs = {
            "lung": ((mask & LUNG) > 0) & ~dev,
            "body": body_mask(item["input"][0].numpy(), mask) & ~dev,
        }
        if not dev.any():
            continue
        maps = _maps(model, detector, item["input"][None].to(device), samples, seed)
        case = dataset.rows[i].get("case", "")
        for name in (k for k in MAPS if k in maps):
            for ref, neg in refs.items():
                if not neg.any():
                    continue
                rows.append(
                    {
                        "id": item["id"],
                        "case": case,
                        "map": name,
                        "reference": ref,
                        "auroc": pixel_auroc(maps[name], dev, neg),
                        "n_device": int(dev.sum()),
                        "score": maps["_score"],
                        "flag": maps["_flag"],
                    }
                )
    return rows


def summarize_table(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean AUROC of :func:`device_table` rows: ``{case: {map: {reference: mean}}}``."""
    acc: dict = defaultdict(list)
    for r in rows:
        acc[(r["case"], r["map"], r["reference"])].append(r["auroc"])
    out: dict = {}
    for (case, name, ref), v in sorted(acc.items()):
        out.setdefault(case, {}).setdefault(name, {})[ref] = float(np.mean(v))
    return out


def ood_summary(
    table: list[dict],
    in_scores,
    ood_scores,
    detector: OODDetector,
    real: dict[str, float] | None = None,
) -> dict:
    """What ``evaluate --json`` reports: per-case mean pixel AUROCs, the per-image AUROC of
    ``ood_scores`` against ``in_scores`` (in-distribution test images), the flagged fractions,
    and for each real radiograph its score against the in-distribution median."""
    in_s, ood_s = np.asarray(in_scores, float), np.asarray(ood_scores, float)
    out = {
        "pixel_auroc": summarize_table(table),
        "image_auroc": image_auroc(ood_s, in_s) if in_s.size and ood_s.size else None,
        "threshold": detector.threshold.to_dict(),
        "flagged": {
            "in_distribution": float(detector.threshold.flag(in_s).mean()) if in_s.size else None,
            "ood": float(detector.threshold.flag(ood_s).mean()) if ood_s.size else None,
        },
        "in_distribution_median": float(np.median(in_s)) if in_s.size else None,
    }
    if real:
        out["real"] = {
            k: {"score": float(v), "flag": bool(detector.threshold.flag(v))}
            | rank_vs_median(v, in_s)
            for k, v in real.items()
        }
    return out


@torch.no_grad()
def time_costs(
    model: torch.nn.Module,
    detector: OODDetector,
    x: torch.Tensor,
    *,
    samples: int = 20,
    rounds: int = 5,
) -> dict[str, float]:
    """Round-robin timing (``rounds`` rounds, fastest of each kept): one deterministic pass,
    the detector's pass (prediction + density), MC dropout with ``samples`` passes; returns
    the seconds of one pass and the two ratios to it."""
    model = model.eval()
    n_run = detector.stage % model.config.n_stages + 1
    jobs = {
        "forward": lambda: model(x, n_stages=n_run),
        "detector": lambda: detector.predict(x),
        "mc": lambda: mc_dropout_predict(model, x, samples=samples, seed=0, stage=detector.stage),
    }
    for f in jobs.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, f in jobs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    fwd = min(times["forward"])
    return {
        "forward_s": fwd,
        "detector_ratio": min(times["detector"]) / fwd,
        f"mc{samples}_ratio": min(times["mc"]) / fwd,
    }


# ----------------------------------------------------------------------------- one-call hook-ups
def score_radiograph(
    detector: OODDetector, image: np.ndarray, device: str | torch.device = "cpu"
) -> dict[str, float | bool]:
    """``{"ood_score", "ood_flag"}`` of one raw 2-D radiograph (normalized here with
    ``normalize_input``, as ``synthesis.synthesize`` does): for ``predict``'s summary."""
    if np.ndim(image) != 2:
        raise ValueError(f"score_radiograph: expected a 2-D image, got shape {np.shape(image)}")
    x = normalize_input(torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None])
    s = float(image_scores(detector, [x], pick_device(device))[0])
    return {"ood_score": s, "ood_flag": bool(detector.threshold.flag(s))}


def evaluate_ood(
    model: torch.nn.Module,
    detector: OODDetector,
    data_root: str | os.PathLike,
    *,
    samples: int = 20,
    device: str | torch.device = "auto",
    real_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """:func:`ood_summary` of a paired data folder, for ``evaluate --json``: pixel AUROCs of the
    ``ood`` split's device images (:func:`device_table`), the per-image AUROC of the device
    cases against the ``test`` split, and the real radiographs of ``real_dir`` when given."""
    from darkfield_nb.data import PairedDataset
    from darkfield_nb.epistemic.store import batches

    device = pick_device(device)
    ds = {
        s: PairedDataset(data_root, split=s, pad_multiple=1, check=False) for s in ("test", "ood")
    }
    table = device_table(
        model, ds["ood"], detector, samples=samples, device=device, progress=progress
    )
    test = image_scores(detector, batches(ds["test"]), device)
    scores = image_scores(detector, batches(ds["ood"]), device)
    cases = [r.get("case", "") for r in ds["ood"].rows]
    dev = [s for s, c in zip(scores, cases, strict=True) if c in ("pacemaker", "cables", "clips")]
    real = None
    if real_dir is not None:
        size = ds["test"][0]["input"].shape[-1] if len(ds["test"]) else 256
        imgs = load_real(real_dir, size)
        real = {n: float(image_scores(detector, [x], device)[0]) for n, x in imgs}
    return ood_summary(table, test, dev, detector, real)
