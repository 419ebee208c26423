"""Does the predicted lung D depend on how the chest is framed? Same patients, three framings.

    python bench/framing_invariance.py CKPT [CKPT ...] [--patients 30] [--seed 77] [--json OUT]

The simulator draws the same number of random numbers whatever its framing ranges
(``physics.framing.sample_framing``), so a set made with ``chest_fraction=(f, f)`` holds the same
patients, diseases and display looks at every f: only the field of view (and with it the pixel
size, the shift and how much air and arm surrounds the chest) changes. The true mean lung D of a
patient is then the same at every framing (to the pixel sampling), and a model that sees the
patient should predict the same lung D too. Printed per checkpoint:

- mean true and predicted lung D at chest fractions 0.6, 0.8 and 1.0 (deterministic pass,
  ``synthesize(samples=0)``, geometry-aware resampling as ``predict`` does);
- the framing ratio: per patient, predicted lung D at 0.6 over predicted lung D at 1.0 (median
  and range; the truth's ratio beside it);
- the padding ratio: per patient at 1.0, the model input padded by 64 pixels of its own edge
  (after normalization, so every lung pixel keeps its value) over the unpadded prediction.
  A model whose output at a pixel depends only on its neighbourhood gives 1 here; a network
  with instance normalization does not, because the padding changes the per-image feature
  statistics every layer is normalized by.

Both ratios are measured in one run for every checkpoint given, on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.data import normalize_input  # noqa: E402
from darkfield_nb.inference.mc import mc_predict_batch  # noqa: E402
from darkfield_nb.io import read_image  # noqa: E402
from darkfield_nb.labels import LUNG  # noqa: E402
from darkfield_nb.physics import generate_dataset  # noqa: E402
from darkfield_nb.physics.framing import FramingRanges  # noqa: E402
from darkfield_nb.synthesis import synthesize  # noqa: E402

FRACTIONS = (0.6, 0.8, 1.0)
PAD = 64


def make_sets(root: Path, patients: int, seed: int) -> dict[float, Path]:
    """One simulated set per chest fraction, the same patients in each (no OOD cases)."""
    sets = {}
    for f in FRACTIONS:
        sets[f] = root / f"fraction{f}"
        generate_dataset(
            sets[f],
            n_patients=patients,
            size=256,
            seed=seed,
            ood_patients=0,
            pathology_fraction=0.5,
            framing=FramingRanges(chest_fraction=(f, f)),
            progress=False,
        )
    return sets


def load(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radiograph, target D, lung mask) of one image of a simulated set."""
    x = read_image(root / "attenuation" / f"{image_id}.png").astype(np.float32)
    y = read_image(root / "darkfield" / f"{image_id}.tif")
    lung = (read_image(root / "masks" / f"{image_id}.png").astype(np.int64) & LUNG) > 0
    return x, y, lung


def padded_lung_d(model, x: np.ndarray, lung: np.ndarray) -> tuple[float, float]:
    """Mean predicted lung D of the normalized input and of the same input edge-padded by PAD."""
    z = normalize_input(x)
    out = []
    for arr, m in ((z, lung), (np.pad(z, PAD, mode="edge"), np.pad(lung, PAD))):
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        mu = mc_predict_batch(model, t, samples=0)["darkfield"][0, 0].numpy()
        out.append(float(mu[m].mean()))
    return out[0], out[1]


@torch.no_grad()
def measure(ckpt: str, sets: dict[float, Path], ids: list[str]) -> dict:
    """Lung D per framing, framing ratio and padding ratio of one checkpoint."""
    model = checkpoint.load(ckpt).eval()
    true = {f: [] for f in FRACTIONS}
    pred = {f: [] for f in FRACTIONS}
    pad = []
    for i in ids:
        images = {f: load(sets[f], i) for f in FRACTIONS}
        for f, (x, y, lung) in images.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # far-from-geometry warnings are expected here
                mu = synthesize(model, x, samples=0).darkfield
            true[f].append(float(y[lung].mean()))
            pred[f].append(float(mu[lung].mean()))
        x, _, lung = images[1.0]
        plain, padded = padded_lung_d(model, x, lung)
        pad.append(padded / plain)
    t, p = {f: np.array(v) for f, v in true.items()}, {f: np.array(v) for f, v in pred.items()}
    frame = p[0.6] / p[1.0]
    return {
        "checkpoint": ckpt,
        "n": len(ids),
        "true_lung_D": {str(f): float(t[f].mean()) for f in FRACTIONS},
        "pred_lung_D": {str(f): float(p[f].mean()) for f in FRACTIONS},
        "framing_ratio_median": float(np.median(frame)),
        "framing_ratio_range": [float(frame.min()), float(frame.max())],
        "true_framing_ratio_median": float(np.median(t[0.6] / t[1.0])),
        "padding_ratio_median": float(np.median(pad)),
        "padding_ratio_range": [float(min(pad)), float(max(pad))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--seed", type=int, default=77, help="a seed no shipped model trained on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sets = make_sets(Path(tmp), args.patients, args.seed)
        ids = sorted(p.stem for p in (sets[1.0] / "attenuation").glob("*.png"))
        results = [measure(c, sets, ids) for c in args.checkpoints]
    for r in results:
        print(f"\n{r['checkpoint']} ({r['n']} patients)")
        for f in FRACTIONS:
            print(
                f"  chest fraction {f}: true lung D {r['true_lung_D'][str(f)]:.3f}, "
                f"predicted {r['pred_lung_D'][str(f)]:.3f}"
            )
        lo, hi = r["framing_ratio_range"]
        print(
            f"  framing ratio (0.6 / 1.0): predicted {r['framing_ratio_median']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], true {r['true_framing_ratio_median']:.3f}"
        )
        lo, hi = r["padding_ratio_range"]
        print(
            f"  padding ratio ({PAD} px edge): {r['padding_ratio_median']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
