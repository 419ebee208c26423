"""Issue-9 figures of a checkpoint on a simulated test split: lung-D bias and Spearman over
images, 90 % coverage, emphysema coverage and lesion/rest ratio, Nyquist power ratio.

    python bench/simulator_eval.py CKPT DATA_DIR OUT.json   (T = 20, one thread)
"""

import json
import sys

import numpy as np
import torch
from scipy import stats

from darkfield_nb import checkpoint
from darkfield_nb.calibration import ggd_halfwidth, predictive_alpha
from darkfield_nb.data import PairedDataset
from darkfield_nb.labels import EMPHYSEMA, LUNG
from darkfield_nb.models.spectral import nyquist_power_ratio
from darkfield_nb.uncertainty import mc_dropout_predict

torch.set_num_threads(1)
ckpt_path, data, out = sys.argv[1:4]
model = checkpoint.load(ckpt_path).eval()
ds = PairedDataset(data, split="test", pad_multiple=1)
rows = []
for i in range(len(ds)):
    item = ds[i]
    x = item["input"][None]
    y = item["target"][0].numpy()
    m = item["mask"][0].numpy().astype(int)
    r = mc_dropout_predict(model, x, samples=20, seed=0)
    mu = r.mean[0, 0].numpy()
    tot = r.total[0, 0].numpy()
    beta = r.beta[0, 0].numpy()
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
    rows.append(row)
    print(row, flush=True)
ok = [r for r in rows if r["true_lung_D"] is not None]
t = np.array([r["true_lung_D"] for r in ok])
p = np.array([r["pred_lung_D"] for r in ok])
em = [r for r in rows if "emph_coverage" in r]
summary = {
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
print(json.dumps(summary, indent=1))
json.dump({"summary": summary, "rows": rows}, open(out, "w"), indent=1)
