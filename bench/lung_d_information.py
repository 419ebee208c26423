"""Where is a patient's mean lung D in the attenuation image? Three probes of issue 9's
per-image Spearman target (>= 0.5) against a checkpoint and two simulated sets.

    python bench/lung_d_information.py CKPT FIT_DATA TEST_DATA [--out OUT.json]

FIT_DATA is the set the model was trained on (seed 1), TEST_DATA a set made with a seed it never
saw (seed 12); in-distribution images only. Lung D is the mean target D over the lung mask, the
prediction the mean of the deterministic (dropout off) prediction over the same mask.

1. **The model plus the case type.** Each case type's predictions are rescaled so that their
   mean equals that type's true mean on TEST_DATA (an oracle of the case type and its mean D):
   ``p_i <- p_i mean_{j in c(i)} t_j / mean_{j in c(i)} p_j``. What the model would reach if it
   recognised every disease and its average effect perfectly but kept its within-type ranking.
2. **The input alone, with the true masks.** Twelve global descriptors of the processed
   radiograph (mean, spread and percentiles of the input inside the true lung mask, the
   lung-heart contrast, the lung's area and extent, the whole image's mean and spread) predict
   ``log t`` with ridge regression (``sklearn.linear_model.RidgeCV``, penalty by leave-one-out)
   fitted on FIT_DATA, scored on TEST_DATA; and the AUROC of each descriptor for emphysema
   against healthy on TEST_DATA (``sklearn.metrics.roc_auc_score``).
3. **The model's own features.** The lung-weighted mean of each of the last three encoder
   levels' features of the last stage, ``sum_x w(x) f(x) / sum_x w(x)`` with ``w = max(mu, 0)``
   pooled to the level's grid (air has ``mu = 0``, so the pooling ignores the framing), predicts
   the correction ``log(t / p)`` with ridge regression, 5-fold cross-validated on TEST_DATA
   (on FIT_DATA the features have seen each patient's target).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.data import PairedDataset  # noqa: E402
from darkfield_nb.epistemic.density import encoder_outputs  # noqa: E402
from darkfield_nb.labels import HEART, LUNG  # noqa: E402

ID_SPLITS = ["train", "val", "test"]
DESCRIPTORS = (
    "lung mean",
    "lung sd",
    "lung p10",
    "lung p90",
    "heart mean",
    "lung - heart",
    "lung area",
    "lung height",
    "lung width",
    "height / width",
    "image mean",
    "image sd",
)
PENALTIES = np.logspace(-2, 4, 13)


def descriptors(x: np.ndarray, mask: np.ndarray) -> list[float]:
    """The twelve input descriptors of :data:`DESCRIPTORS` (true lung and heart masks)."""
    lung, heart = (mask & LUNG) > 0, (mask & HEART) > 0
    rows, cols = np.where(lung.any(1))[0], np.where(lung.any(0))[0]
    xl = x[lung]
    xh = x[heart] if heart.any() else xl
    height, width = (rows.max() - rows.min()) / x.shape[0], (cols.max() - cols.min()) / x.shape[1]
    return [
        xl.mean(),
        xl.std(),
        *np.percentile(xl, [10, 90]),
        xh.mean(),
        xl.mean() - xh.mean(),
        lung.mean(),
        height,
        width,
        height / max(width, 1e-6),
        x.mean(),
        x.std(),
    ]


def pooled_features(feats: list[torch.Tensor], mu: torch.Tensor) -> np.ndarray:
    """Lung-weighted mean of each level's features, ``w = max(mu, 0)`` area-pooled to its grid."""
    w = mu.clamp(min=0)[None, None]
    out = []
    for f in feats:
        wl = F.interpolate(w, size=f.shape[-2:], mode="area")[0]
        out.append(((f[0] * wl).sum((1, 2)) / wl.sum().clamp(min=1e-8)).numpy())
    return np.concatenate(out)


def collect(model, root: str) -> dict:
    """Per image: id, case, true and predicted lung D, input descriptors, pooled features."""
    cases = {r["id"]: r["case"] for r in csv.DictReader(open(Path(root) / "manifest.csv"))}
    ds = PairedDataset(root, split=ID_SPLITS, pad_multiple=1)
    levels = list(range(len(model.stages[-1].down)))[-3:]
    out = {k: [] for k in ("id", "case", "true", "pred", "desc", "feat")}
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"][0].numpy().astype(np.int64)
        lung = (mask & LUNG) > 0
        feats, o = encoder_outputs(model, item["input"][None], levels, stage=-1)
        mu = o.mu[0, 0]
        out["id"].append(item["id"])
        out["case"].append(cases[item["id"]])
        out["true"].append(float(item["target"][0].numpy()[lung].mean()))
        out["pred"].append(float(mu.numpy()[lung].mean()))
        out["desc"].append(descriptors(item["input"][0].numpy(), mask))
        out["feat"].append(pooled_features(feats, mu))
    return {k: np.asarray(v) for k, v in out.items()}


def case_oracle(t: np.ndarray, p: np.ndarray, case: np.ndarray) -> np.ndarray:
    """Predictions rescaled per case type to that type's true mean (probe 1)."""
    q = p.copy()
    for c in np.unique(case):
        k = case == c
        q[k] = p[k] * t[k].mean() / p[k].mean()
    return q


def ridge() -> RidgeCV:
    return RidgeCV(alphas=PENALTIES)


def standardize(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, s = a.mean(0), a.std(0) + 1e-12
    return (a - m) / s, (b - m) / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("fit_data")
    ap.add_argument("test_data")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = checkpoint.load(args.checkpoint).eval()
    fit, test = collect(model, args.fit_data), collect(model, args.test_data)
    t, p, case = test["true"], test["pred"], test["case"]
    res = {"n_fit": len(fit["true"]), "n_test": len(t)}
    res["model"] = float(spearmanr(t, p)[0])
    res["model_plus_case_type"] = float(spearmanr(t, case_oracle(t, p, case))[0])
    res["case_type_only"] = float(spearmanr(t, case_oracle(t, np.ones_like(t), case))[0])
    res["within_case"] = {
        c: {
            "n": int((case == c).sum()),
            "true": float(t[case == c].mean()),
            "pred": float(p[case == c].mean()),
            "spearman": float(spearmanr(t[case == c], p[case == c])[0]),
        }
        for c in np.unique(case)
    }

    a, b = standardize(fit["desc"], test["desc"])
    r = ridge().fit(a, np.log(fit["true"]))
    res["input_descriptors"] = {
        "penalty": float(r.alpha_),
        "spearman_test": float(spearmanr(t, r.predict(b))[0]),
        "spearman_fit": float(spearmanr(fit["true"], r.predict(a))[0]),
    }
    sel = np.isin(case, ["healthy", "emphysema"])
    res["emphysema_vs_healthy_auroc"] = {
        name: float(roc_auc_score(case[sel] == "emphysema", test["desc"][sel, j]))
        for j, name in enumerate(DESCRIPTORS)
    }

    corrected = np.empty_like(p)
    y = np.log(t / p)
    for tr, te in KFold(5, shuffle=True, random_state=0).split(t):
        a, b = standardize(test["feat"][tr], test["feat"][te])
        corrected[te] = p[te] * np.exp(ridge().fit(a, y[tr]).predict(b))
    res["model_features_cv"] = {
        "n_features": int(test["feat"].shape[1]),
        "spearman": float(spearmanr(t, corrected)[0]),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
