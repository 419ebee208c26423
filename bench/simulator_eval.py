"""Issue-9 figures of a checkpoint on simulated data: lung-D bias and Spearman over images,
90 % coverage, emphysema coverage and lesion/rest ratio, Nyquist power ratio.

    python bench/simulator_eval.py CKPT DATA_DIR OUT.json [--splits test] [--device cpu]

T = 20, one thread on CPU. ``--splits train,val,test`` evaluates every in-distribution image of
a set made with a seed the model never saw (``bench/gpu_train512.py`` does this).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.calibration import ggd_halfwidth, predictive_alpha  # noqa: E402
from darkfield_nb.data import PairedDataset  # noqa: E402
from darkfield_nb.hardware import pick_device  # noqa: E402
from darkfield_nb.labels import EMPHYSEMA, LUNG  # noqa: E402
from darkfield_nb.models.spectral import nyquist_power_ratio  # noqa: E402
from darkfield_nb.uncertainty import mc_dropout_predict  # noqa: E402

ID_SPLITS = ("train", "val", "test")


def image_row(item: dict, r) -> dict:
    """The figures of one image from its item and MC result."""
    y = item["target"][0].numpy()
    m = item["mask"][0].numpy().astype(int)
    mu = r.mean[0, 0].float().cpu().numpy()
    tot = r.total[0, 0].float().cpu().numpy()
    beta = r.beta[0, 0].float().cpu().numpy()
    lung = (m & LUNG) > 0
    emph = (m & EMPHYSEMA) > 0
    h = ggd_halfwidth(0.9, predictive_alpha(tot, beta), beta)
    inside = np.abs(y - mu) <= h
    row = {
        "id": item["id"],
        "true_lung_D": float(y[lung].mean()) if lung.any() else None,
        "pred_lung_D": float(mu[lung].mean()) if lung.any() else None,
        "nyquist_pred": float(nyquist_power_ratio(mu)),
        "nyquist_target": float(nyquist_power_ratio(y)),
        "coverage90_all": float(inside.mean()),
    }
    if emph.sum() > 20:
        rest = lung & ~emph
        row.update(
            emph_coverage=float(inside[emph].mean()),
            emph_pixels=int(emph.sum()),
            true_ratio=float(y[emph].mean() / y[rest].mean()),
            pred_ratio=float(mu[emph].mean() / mu[rest].mean()),
        )
    return row


def summarize(rows: list[dict]) -> dict:
    """Bias of the mean lung D, Spearman over images, coverage, emphysema figures."""
    ok = [r for r in rows if r["true_lung_D"] is not None]
    t = np.array([r["true_lung_D"] for r in ok])
    p = np.array([r["pred_lung_D"] for r in ok])
    em = [r for r in rows if "emph_coverage" in r]
    return {
        "n": len(rows),
        "lung_D_bias_rel": float(p.mean() / t.mean() - 1),
        "spearman_lung_D": float(stats.spearmanr(t, p)[0]),
        "nyquist_pred_over_target_median": float(
            np.median([r["nyquist_pred"] / r["nyquist_target"] for r in rows])
        ),
        "coverage90_all_mean": float(np.mean([r["coverage90_all"] for r in rows])),
        "emphysema_cases": len(em),
        "emph_coverage_pooled": float(
            sum(r["emph_coverage"] * r["emph_pixels"] for r in em)
            / max(1, sum(r["emph_pixels"] for r in em))
        )
        if em
        else None,
        "spearman_emph_ratio": float(
            stats.spearmanr([r["true_ratio"] for r in em], [r["pred_ratio"] for r in em])[0]
        )
        if len(em) > 2
        else None,
    }


def evaluate_checkpoint(
    ckpt_path, data, splits=("test",), device: str = "cpu", samples: int = 20
) -> dict:
    """``{"summary": ..., "rows": [...]}`` of ``ckpt_path`` on ``splits`` of ``data``
    (None: every in-distribution split)."""
    dev = pick_device(device)
    model = checkpoint.load(ckpt_path).to(dev).eval()
    ds = PairedDataset(data, split=list(splits or ID_SPLITS), pad_multiple=1)
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        with torch.no_grad():
            r = mc_dropout_predict(model, item["input"][None].to(dev), samples=samples, seed=0)
        rows.append(image_row(item, r))
    return {"summary": summarize(rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--splits", default="test")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    result = evaluate_checkpoint(
        args.checkpoint, args.data, splits=args.splits.split(","), device=args.device
    )
    print(json.dumps(result["summary"], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
