"""Evaluate a progressive generator on a paired data set: image quality per stage, uncertainty.

For every image of the chosen split this runs the model once deterministically (all stages,
dropout off) and once with Monte Carlo dropout (final stage), then reports, per stage,

    MSE, PSNR, SSIM (``darkfield_nb.metrics``, data range ``DARKFIELD_DATA_RANGE``)

as image means with percentile-bootstrap 95 % confidence intervals (resampling images), in the
whole image and inside the lung mask, and for the final stage the uncertainty figures:

    NLL       mean over pixels of the GGD negative log-likelihood of the target
    coverage  fraction of target pixels inside the central 90 % GGD interval (ideal 0.90)
    sigma     mean aleatoric, epistemic and total standard deviations (D units)
    spearman  Spearman rank correlation between total sigma and |error| over pooled pixels

The JSON written by ``darkfield-nb evaluate`` is this function's return value, plus (from
:func:`stored_entries`) ``calibration`` and ``ood`` when the checkpoint carries a
recalibration or an OOD detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from darkfield_nb import metrics
from darkfield_nb.hardware import pick_device
from darkfield_nb.labels import LUNG
from darkfield_nb.losses import ggd_nll
from darkfield_nb.uncertainty import ggd_interval, ggd_std, mc_dropout_predict

QUALITY = ("mse", "psnr", "ssim")
SPEARMAN_PIXELS = 200_000  # pooled pixels subsampled for the rank correlation


@dataclass
class ImageResult:
    """Per-image numbers and maps of one evaluated image (kept for galleries)."""

    id: str
    quality: dict[str, list[float]]  # metric -> one value per stage
    lung_quality: dict[str, list[float]]


def _quality(target: np.ndarray, pred: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    r = metrics.DARKFIELD_DATA_RANGE
    return {
        "mse": metrics.mse(target, pred, mask=mask),
        "psnr": metrics.psnr(target, pred, data_range=r, mask=mask),
        "ssim": metrics.ssim(target, pred, data_range=r, mask=mask),
    }


def _summary(per_image: list[dict[str, list[float]]], n_stages: int, seed: int) -> dict:
    out: dict = {}
    for name in QUALITY:
        means, cis = [], []
        for k in range(n_stages):
            mean, low, high = metrics.bootstrap_ci([img[name][k] for img in per_image], seed=seed)
            means.append(mean)
            cis.append([low, high])
        out[name] = means
        out[f"{name}_ci95"] = cis
    return out


def paired_differences(images: list[dict], seed: int = 0) -> dict:
    """Per metric and stage k >= 2: the mean per-image change from the previous stage and from
    stage 1, with a percentile-bootstrap 95 % CI over images and the fraction of images that
    improved (lower MSE, higher PSNR / SSIM). Pairing by image removes the between-image
    spread that dominates the unpaired intervals."""
    out: dict = {}
    for name in QUALITY:
        v = np.array([img[name] for img in images], dtype=np.float64)
        sign = -1.0 if name == "mse" else 1.0
        rows = []
        for k in range(1, v.shape[1]):
            for ref in sorted({k - 1, 0}):
                d = v[:, k] - v[:, ref]
                mean, low, high = metrics.bootstrap_ci(d, seed=seed)
                rows.append(
                    {
                        "stage": k + 1,
                        "versus": ref + 1,
                        "mean": mean,
                        "ci95": [low, high],
                        "improved": float(np.mean(sign * d > 0)),
                    }
                )
        out[name] = rows
    return out


def _spearman(sigma: list[np.ndarray], err: list[np.ndarray]) -> float | None:
    """Spearman rank correlation of pooled sigma and |error|; None when either is constant."""
    s, e = np.concatenate(sigma), np.concatenate(err)
    if np.ptp(s) == 0 or np.ptp(e) == 0:
        return None
    return float(stats.spearmanr(s, e).statistic)


def _check_finite(outs, image_id: str) -> None:
    """Refuse non-finite model outputs: they would turn every figure into NaN."""
    for k, out in enumerate(outs):
        for name in ("mu", "alpha", "beta"):
            bad = int((~torch.isfinite(getattr(out, name))).sum())
            if bad:
                raise ValueError(
                    f"evaluate: image {image_id!r}: stage {k + 1} output {name} holds {bad} "
                    "non-finite value(s) (NaN/Inf); the model's weights are broken (a diverged "
                    "run?) or the input is out of range"
                )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    *,
    mc_samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    coverage_level: float = 0.9,
    n_stages: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``model`` (a ``ProgressiveGenerator``) on every item of ``dataset``.

    ``dataset`` is a ``PairedDataset`` built with ``pad_multiple=1`` (the model pads itself).
    Returns a JSON-able dict: ``mse``, ``psnr``, ``ssim`` (lists, stage 1 first) with ``*_ci95``,
    the same inside the lung under ``lung``, per-image values under ``images``, and
    ``uncertainty`` for the final stage (see the module docstring). ``mc_samples=0`` skips MC
    dropout (the uncertainty block then uses the deterministic aleatoric sigma only).
    ``n_stages`` evaluates only the first stages (e.g. those a checkpoint says are trained).
    ``device``: "auto" | "cpu" | "cuda" | a ``torch.device`` (``hardware.pick_device``).

    Raises:
        ValueError: the data set is empty, or the model gives a non-finite output for an image
            (named by id): the figures would all be NaN.
    """
    if len(dataset) == 0:
        root = getattr(dataset, "root", None)
        where = f"{root}: " if root is not None else "evaluate: "
        raise ValueError(f"{where}the data set (split) to evaluate is empty")
    device = pick_device(device)
    model = model.to(device).eval()
    n_stages = model.config.n_stages if n_stages is None else int(n_stages)
    per_image, lung_image = [], []
    nll_sum = covered = n_pix = 0.0
    sig = {"aleatoric": 0.0, "epistemic": 0.0, "total": 0.0}
    pooled_sigma, pooled_err = [], []
    rng = np.random.default_rng(seed)
    for i in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        item = dataset[i]
        x = item["input"][None].to(device)
        y = item["target"][None].to(device)
        outs = model(x, n_stages=n_stages)
        _check_finite(outs, item["id"])
        target = y[0, 0].cpu().numpy()
        lung = (item["mask"][0].numpy() & LUNG) > 0
        preds = [o.mu[0, 0].float().cpu().numpy() for o in outs]
        q = [_quality(target, p, None) for p in preds]
        per_image.append({"id": item["id"], **{m: [s[m] for s in q] for m in QUALITY}})
        if lung.sum() > 100:
            ql = [_quality(target, p, lung) for p in preds]
            lung_image.append({"id": item["id"], **{m: [s[m] for s in ql] for m in QUALITY}})

        last = outs[-1]
        if mc_samples > 0:
            mc = mc_dropout_predict(model, x, samples=mc_samples, seed=seed + i, stage=n_stages - 1)
            mean, alea, epi, total = mc.mean, mc.aleatoric, mc.epistemic, mc.total
        else:
            mean, alea = last.mu, ggd_std(last.alpha, last.beta)
            epi, total = torch.zeros_like(alea), alea
        nll_sum += float(ggd_nll(y, last.mu, last.alpha, last.beta, reduction="sum"))
        low, high = ggd_interval(coverage_level, last.mu, last.alpha, last.beta)
        covered += float(((y >= low) & (y <= high)).sum())
        n_pix += y.numel()
        for name, m in (("aleatoric", alea), ("epistemic", epi), ("total", total)):
            sig[name] += float(m.sum())
        err = (mean - y).abs().flatten().cpu().numpy()
        s = total.flatten().cpu().numpy()
        take = rng.choice(
            err.size, size=min(err.size, SPEARMAN_PIXELS // len(dataset) + 1), replace=False
        )
        pooled_err.append(err[take])
        pooled_sigma.append(s[take])

    result = {
        "n_images": len(per_image),
        "data_range": metrics.DARKFIELD_DATA_RANGE,
        **_summary(per_image, n_stages, seed),
        "lung": _summary(lung_image, n_stages, seed) if lung_image else None,
        "paired": paired_differences(per_image, seed) if n_stages > 1 else None,
        "uncertainty": {
            "mc_samples": mc_samples,
            "nll": nll_sum / n_pix,
            f"coverage_{int(round(coverage_level * 100))}": covered / n_pix,
            "mean_sigma_aleatoric": sig["aleatoric"] / n_pix,
            "mean_sigma_epistemic": sig["epistemic"] / n_pix,
            "mean_sigma_total": sig["total"] / n_pix,
            "spearman_sigma_error": _spearman(pooled_sigma, pooled_err),
        },
        "images": per_image,
    }
    return result


def format_stage_table(result: dict, paper: bool = True) -> str:
    """A plain-text table of MSE / PSNR / SSIM per stage with 95 % CIs, beside the paper's."""
    paper_rows = {
        "mse": (0.0131, 0.0125, 0.0123),
        "psnr": (19.35, 19.57, 19.71),
        "ssim": (0.38, 0.47, 0.52),
    }
    lines = [
        f"{'stage':<6}"
        + "".join(f"{m.upper():>26}" for m in QUALITY)
        + ("   paper (MSE / PSNR / SSIM)" if paper else "")
    ]
    for k in range(len(result["mse"])):
        cells = []
        for m in QUALITY:
            v, (lo, hi) = result[m][k], result[f"{m}_ci95"][k]
            fmt = ".5f" if m == "mse" else ".3f"
            cells.append(f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]".rjust(26))
        row = f"{k + 1:<6}" + "".join(cells)
        if paper and k < 3:
            row += (
                f"   {paper_rows['mse'][k]:.4f} / {paper_rows['psnr'][k]:.2f} / "
                f"{paper_rows['ssim'][k]:.2f}"
            )
        lines.append(row)
    return "\n".join(lines)


def stored_entries(
    model: torch.nn.Module,
    data_root,
    *,
    split: str = "test",
    samples: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stage: int = -1,
    progress: bool = False,
) -> tuple[dict, list[str]]:
    """What ``evaluate --json`` adds for the entries a checkpoint carries (``inference.load_model``
    attaches them to the model as ``model.recalibration`` / ``model.ood_detector``).

    Returns (figures, notes). ``figures["calibration"]``: ``calibration.calibration_report`` of
    the ``split`` predictions (``collect_predictions``, ``samples`` MC passes, ``stage``):
    every calibration figure, pooled and per region, before and after the recalibration.
    ``figures["ood"]``: ``ood.evaluate_ood`` (pixel AUROCs of the ``ood`` split's devices,
    per-image AUROC of device cases against ``test``), only when the data has both splits;
    otherwise a note says why it is missing.
    """
    from darkfield_nb.contract import read_manifest
    from darkfield_nb.data import PairedDataset

    device = pick_device(device)
    figures: dict = {}
    notes: list[str] = []
    recal = getattr(model, "recalibration", None)
    detector = getattr(model, "ood_detector", None)
    counts: dict[str, int] = {}
    if recal is not None or detector is not None:
        for row in read_manifest(data_root):
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    if recal is not None:
        from darkfield_nb.calibration import calibration_report, collect_predictions

        fitted = (recal.get("fitted_on") or {}).get("split")
        if fitted == split:
            notes.append(
                f"calibration: the recalibration was fitted on the '{split}' split evaluated "
                "here; its 'after' figures are optimistic"
            )
        data = PairedDataset(data_root, split=split, pad_multiple=1, check=False)
        preds = collect_predictions(
            model, data, samples=samples, seed=seed, device=device, stage=stage, progress=progress
        )
        level = getattr(model, "lung_level", None)
        g = None
        if level is not None:
            _, g = level.factors(torch.from_numpy(preds.x)[:, None], preds.mu)
        figures["calibration"] = calibration_report(preds, recal, level_factor=g)
    if detector is not None:
        missing = [s for s in ("test", "ood") if counts.get(s, 0) == 0]
        if missing:
            notes.append(
                f"ood: {data_root} has no {' / '.join(repr(s) for s in missing)} split; the "
                "checkpoint's OOD detector is not evaluated (it needs 'test' and 'ood')"
            )
        else:
            from darkfield_nb.ood import evaluate_ood

            figures["ood"] = evaluate_ood(
                model, detector, data_root, samples=samples, device=device, progress=progress
            )
    return figures, notes
