"""How well could any model rank patients by their mean lung D? Two ceilings on simulated data.

    python bench/lung_d_ceiling.py [--patients 120] [--size 256] [--seed 4242]

1. Everything but the patient's dark-field coefficient: the same patients simulated twice, with
   the coefficient drawn from N(2.5, 0.4) per metre (DESIGN section 2) and with it fixed at 2.5;
   Spearman(true lung D, lung D without the spread) is the best rank correlation a predictor can
   reach if it sees lung depth, disease and everything else exactly but not the coefficient.
2. The case type only: Spearman(true lung D, the mean lung D of the image's case type
   (healthy, nodule, pneumonia, effusion, pneumothorax, emphysema)).
Lung D: the mean of the target D over the lung mask, in-distribution images only.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import labels  # noqa: E402
from darkfield_nb.io import read_image  # noqa: E402
from darkfield_nb.physics import generate_dataset, materials  # noqa: E402


def lung_d(root: Path) -> dict[str, tuple[float, str]]:
    """id -> (mean target D over the lung mask, case) for the in-distribution rows."""
    out = {}
    with open(root / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["ood"] == "1":
                continue
            d = read_image(next((root / "darkfield").glob(r["id"] + ".*")))
            m = read_image(next((root / "masks").glob(r["id"] + ".*"))).astype(np.int64)
            lung = (m & labels.LUNG) > 0
            out[r["id"]] = (float(d[lung].mean()), r["case"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a_root, b_root = Path(tmp) / "spread", Path(tmp) / "fixed"
        generate_dataset(a_root, args.patients, args.size, args.seed, progress=False)
        sd = materials.EPSILON_LUNG_SD_PER_M
        materials.EPSILON_LUNG_SD_PER_M = 0.0  # the draw still consumes the generator
        try:
            generate_dataset(b_root, args.patients, args.size, args.seed, progress=False)
        finally:
            materials.EPSILON_LUNG_SD_PER_M = sd
        a, b = lung_d(a_root), lung_d(b_root)
    ids = sorted(a)
    true = np.array([a[i][0] for i in ids])
    blind = np.array([b[i][0] for i in ids])
    cases = np.array([a[i][1] for i in ids])
    means = {c: float(true[cases == c].mean()) for c in sorted(set(cases))}
    print(f"{len(ids)} patients, {args.size} px, seed {args.seed}")
    print(f"coefficient of variation of lung D: {true.std() / true.mean():.3f}")
    print(f"ceiling 1, all but the coefficient: Spearman {spearmanr(true, blind)[0]:.3f}")
    by_case = [means[c] for c in cases]
    print(f"ceiling 2, case type only: Spearman {spearmanr(true, by_case)[0]:.3f}")
    for c, v in means.items():
        print(f"  {c:13s} n={int((cases == c).sum()):3d} mean lung D {v:.3f}")


if __name__ == "__main__":
    main()
