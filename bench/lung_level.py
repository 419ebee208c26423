"""Issue-9 figures of a checkpoint's lung level on never-trained simulated patients: the network
alone, the network with the stored recalibration, and with the lung level under it.

    python bench/lung_level.py CKPT PREDICTIONS.npz OUT.json

``PREDICTIONS.npz``: the checkpoint generator's MC-dropout predictions of a paired set made with a
seed the model and the level never saw (``calibration.Predictions`` format, e.g.
``collect_predictions(...).save(path)``; session 20 saved v5's on the 150 seed-12 patients as
/work/runs/s20/v5/s12_v5.npz). Figures, each over the images (bootstrap over patients, 2000
resamples, 95 % percentile interval):

- per-image lung D: t_i the mean of the target over the true lung mask, p_i the same of the
  written dark-field (network mu; c mu; c g_i mu with the level);
- Spearman(t, p), relative bias mean(p) / mean(t) - 1, pixel MSE;
- the level's own estimate L_i against t_i (Spearman);
- 90 % interval coverage of the true D over all pixels and over emphysematous pixels (GGD of the
  predicted shape and the total sigma, times g and, "field", times the stored field factors);
- Spearman over emphysema cases of predicted and true lesion / rest-of-lung D ratio (a global
  factor cannot change it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.calibration import ggd_halfwidth  # noqa: E402
from darkfield_nb.calibration.collect import Predictions  # noqa: E402
from darkfield_nb.calibration.recalibrate import SigmaScaling  # noqa: E402
from darkfield_nb.calibration.store import mean_factor, recalibration_of  # noqa: E402
from darkfield_nb.labels import EMPHYSEMA, LUNG  # noqa: E402
from darkfield_nb.level.store import level_from_entry, level_of  # noqa: E402


def boot(fn, n: int, reps: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile interval of ``fn(index)`` over patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    vals = [fn(rng.integers(0, n, n)) for _ in range(reps)]
    return [float(v) for v in np.percentile(vals, [2.5, 97.5])]


def figures(P: Predictions, mu: np.ndarray, alpha: np.ndarray, lung, emph, t) -> dict:
    """Per-image lung D figures and coverage of one variant (module docstring)."""
    p = np.array([np.float64(mu[i][lung[i]]).mean() for i in range(len(mu))])
    inside = np.abs(P.y - mu) <= ggd_halfwidth(0.9, alpha, P.beta)
    rest = lung & ~emph
    em = [i for i in range(len(mu)) if emph[i].sum() > 20]
    ratio_t = [P.y[i][emph[i]].mean() / P.y[i][rest[i]].mean() for i in em]
    ratio_p = [mu[i][emph[i]].mean() / mu[i][rest[i]].mean() for i in em]
    return {
        "spearman_lung_D": float(stats.spearmanr(t, p)[0]),
        "spearman_95ci": boot(lambda i: stats.spearmanr(t[i], p[i])[0], len(t)),
        "lung_D_bias_rel": float(p.mean() / t.mean() - 1),
        "bias_95ci": boot(lambda i: p[i].mean() / t[i].mean() - 1, len(t)),
        "mse": float(np.mean((P.y - mu) ** 2)),
        "coverage90_all": float(inside.mean()),
        "coverage90_emphysema": float(inside[emph].mean()),
        "spearman_emph_ratio": float(stats.spearmanr(ratio_t, ratio_p)[0]),
        "n_emphysema_cases": len(em),
    }


def main() -> None:
    ckpt_path, pred_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    recal, entry = recalibration_of(ckpt), level_of(ckpt)
    if entry is None:
        raise SystemExit(f"{ckpt_path}: carries no lung level")
    level = level_from_entry(entry, ckpt_path)
    P = Predictions.load(pred_path)
    lung, emph = (P.mask & LUNG) > 0, (P.mask & EMPHYSEMA) > 0
    t = np.array([np.float64(P.y[i][lung[i]]).mean() for i in range(len(P.y))])
    L, g = level.factors(torch.from_numpy(P.x)[:, None], P.mu)
    c = mean_factor(recal) if recal else 1.0
    sc = SigmaScaling.from_dict(recal["sigma_scaling"]) if recal else None
    gs = g.reshape(-1, 1, 1)
    a_t = P.alpha_total
    res = {
        "checkpoint": ckpt_path,
        "predictions": pred_path,
        "n_images": len(t),
        "mean_factor_c": c,
        "level_estimate": {
            "spearman": float(stats.spearmanr(t, L)[0]),
            "spearman_95ci": boot(lambda i: stats.spearmanr(t[i], L[i])[0], len(t)),
            "bias_rel": float(L.mean() / t.mean() - 1),
        },
        "factor_g": {"min": float(g.min()), "median": float(np.median(g)), "max": float(g.max())},
        "network": figures(P, P.mu, a_t, lung, emph, t),
        "level_and_c": figures(P, c * gs * P.mu, gs * a_t, lung, emph, t),
    }
    if sc is not None and sc.per_field:
        mu = c * gs * P.mu
        res["level_and_c_field_sigma"] = figures(P, mu, sc.field_map(mu) * gs * a_t, lung, emph, t)
    out.write_text(json.dumps(res, indent=1))
    print(
        json.dumps(
            {k: v for k, v in res.items() if k not in ("checkpoint", "predictions")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
